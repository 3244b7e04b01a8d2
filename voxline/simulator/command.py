"""`voxline call`: place simulated Twilio calls and print what the caller experienced."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from pathlib import Path
from typing import Any

from voxline.simulator.caller import run_calls
from voxline.simulator.results import CallResult, aggregate
from voxline.simulator.script import CallScript, Utterance
from voxline.simulator.voice import CALLER_VOICES, use_voice

DEFAULT_LINES = ["Hi, I would like to know your opening hours.", "Thank you, that is all."]


def add_call_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--url", default=os.environ.get("VOXLINE_GATEWAY_URL", "http://127.0.0.1:8080"))
    parser.add_argument("--agent", default="demo", help="agent id (the webhook's ?agent=)")
    # --say and --wav share one list so their order on the command line is the call's order.
    parser.add_argument("--say", dest="lines", action="append", type=lambda s: ("say", s), metavar="TEXT")
    parser.add_argument("--wav", dest="lines", action="append", type=lambda s: ("wav", s), metavar="PATH")
    parser.add_argument(
        "--barge-in-ms", type=int, default=None, help="talk N ms after each reply starts (utterances after the first)"
    )
    parser.add_argument("--dtmf", default=None, metavar="DIGITS", help="key these digits after the greeting")
    parser.add_argument("--calls", type=int, default=1, help="run N calls concurrently")
    parser.add_argument("--auth-token", default=os.environ.get("TWILIO_AUTH_TOKEN"), help="sign the webhook")
    parser.add_argument("--reply-timeout", type=float, default=15.0, metavar="S", help="wait this long for a reply")
    parser.add_argument("--greeting-timeout", type=float, default=10.0, metavar="S", help="0: do not wait for one")
    parser.add_argument("--stream-token", default=None, help="send this stream_token instead of the TwiML's")
    parser.add_argument("--no-stream-token", action="store_true", help="strip the stream_token parameter")
    parser.add_argument("--malformed-after-ms", type=int, default=None, help="inject malformed frames at N ms")
    parser.add_argument(
        "--voice",
        choices=CALLER_VOICES,
        default=os.environ.get("VOXLINE_CALLER_VOICE", "piper"),
        help="the caller's voice for --say: piper (natural, what Whisper hears well) or espeak (robotic, cheap)",
    )
    parser.add_argument(
        "--var",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="a per-call variable for the agent's {{NAME}} placeholders, as POST /v1/calls sends it (repeatable)",
    )
    parser.add_argument("--json", default=None, metavar="PATH", help="write every result as JSON")
    parser.add_argument("--quiet", action="store_true")


def build_script(args: argparse.Namespace) -> CallScript:
    lines: list[tuple[str, str]] = args.lines or [("say", text) for text in DEFAULT_LINES]
    utterances: list[Utterance] = []
    if args.dtmf:
        utterances.append(Utterance(dtmf=args.dtmf))
    for n, (kind, value) in enumerate(lines):
        barge = args.barge_in_ms if n > 0 else None
        if kind == "say":
            utterances.append(Utterance(text=value, barge_in_after_ms=barge))
        else:
            utterances.append(Utterance(wav=Path(value), barge_in_after_ms=barge))
    said = [value for kind, value in lines if kind == "say"]
    return CallScript(
        agent_id=args.agent,
        utterances=utterances,
        # The fake STT cannot hear; it reads its script from this stream parameter. Real
        # recognisers ignore it.
        extra_parameters={"fake_transcripts": "|".join(said)} if said and len(said) == len(lines) else {},
        stream_token_override=args.stream_token,
        drop_stream_token=args.no_stream_token,
        malformed_frame_after_ms=args.malformed_after_ms,
        reply_timeout_s=args.reply_timeout,
        greeting_timeout_s=args.greeting_timeout,
        wait_for_greeting=args.greeting_timeout > 0,
        variables=dict(pair.partition("=")[::2] for pair in args.var),
    )


async def run_call_command(args: argparse.Namespace) -> int:
    use_voice(args.voice)
    template = build_script(args)
    scripts = [template] + [
        CallScript(**{**vars(template), "call_sid": None, "account_sid": None}) for _ in range(args.calls - 1)
    ]
    done: list[CallResult] = []

    def progress(result: CallResult) -> None:
        done.append(result)
        if len(scripts) > 1 and not args.quiet:
            state = "ok" if result.accepted and not result.errors else "FAILED"
            print(f"[{len(done)}/{len(scripts)}] {result.call_sid} {state}", file=sys.stderr, flush=True)

    results = await run_calls(args.url, scripts, auth_token=args.auth_token, on_result=progress)
    summary = aggregate(results)
    if args.json:
        payload = json.dumps({"calls": [r.to_dict() for r in results], "aggregate": summary}, indent=2)
        await asyncio.to_thread(Path(args.json).write_text, payload)
    if len(results) == 1:
        print_call(results[0], quiet=args.quiet)
    else:
        print_aggregate(summary)
        for r in results:
            for err in r.errors:
                print(f"{r.call_sid}: {err}")
    return 0 if all(r.accepted and not r.errors for r in results) else 1


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f}"


def print_call(r: CallResult, quiet: bool = False) -> None:
    state = "accepted" if r.accepted else "NOT accepted"
    print(f"call {r.call_sid} (agent {r.agent_id}): {state}, {len(r.turns)} turns, {r.duration_ms / 1000:.1f} s")
    if not quiet:
        print_transcript(r.record)
    if not quiet and (r.turns or r.greeting_latency_ms is not None):
        print("\nlatency, simulator clock (ms from the caller's speech end):")
        print(f"  greeting: first media {_fmt(r.greeting_latency_ms)} ms after stream start")
        print(f"  {'utt':>3} {'turn':>4} {'first media':>11} {'first heard':>11} {'reply ms':>8} {'heard ms':>8}  said")
        for t in r.turns:
            flag = " (barge-in)" if t.barge_in else ""
            if t.early_replies:
                flag += f" ({t.early_replies} reply started before the caller finished)"
            print(
                f"  {t.utterance:>3} {_fmt(t.turn_id):>4} {_fmt(t.first_media_latency_ms):>11} "
                f"{_fmt(t.first_played_latency_ms):>11} {_fmt(t.reply_audio_ms):>8} {_fmt(t.reply_played_ms):>8}"
                f"  {t.text[:40]}{flag}"
            )
    if not quiet:
        print_stage_latency(r.record)
    for b in r.barge_ins:
        print(
            f"barge-in at utterance {b.utterance}: agent stopped {_fmt(b.latency_ms)} ms after onset"
            f" (by {b.stopped_by or '-'}, turn {_fmt(b.interrupted_turn)}),"
            f" stale audio heard {b.cancelled_audio_heard_after_ms:.0f} ms"
        )
    print(
        f"media sent {r.media_sent}, received {r.media_received}; marks {r.marks_received}, echoed "
        f"{len(r.marks_echoed)}; clears {r.clears}"
    )
    for note in r.notes:
        print(f"note: {note}")
    for err in r.errors:
        print(f"error: {err}")


def print_transcript(record: dict[str, Any] | None) -> None:
    if record is None:
        print("\n(no call record)")
        return
    print(f"\ntranscript (call record, status {record.get('status', '?')}):")
    for turn in record.get("turns") or []:
        if not isinstance(turn, dict):
            continue
        if turn.get("caller_text"):
            print(f"  caller: {turn['caller_text']}")
        if turn.get("reply_text"):
            tag = ""
            if turn.get("interrupted"):
                heard = turn.get("heard_text")
                tag = f"  [interrupted; heard: {heard!r}]" if heard else "  [interrupted]"
            print(f"  agent:  {turn['reply_text']}{tag}")


def print_stage_latency(record: dict[str, Any] | None) -> None:
    turns = [t for t in (record or {}).get("turns") or [] if isinstance(t, dict) and t.get("latency")]
    if not turns:
        return
    print("per-stage latency, call record (ms):")
    for t in turns:
        latency = t["latency"]
        if isinstance(latency, dict):
            stages = ", ".join(f"{k} {_fmt(v) if isinstance(v, int | float) else v}" for k, v in latency.items())
            print(f"  turn {t.get('turn_id', '?')} ({t.get('kind', t.get('role', ''))}): {stages}")


def print_aggregate(summary: dict[str, Any]) -> None:
    print(
        f"{summary['calls']} calls: {summary['accepted']} accepted, {summary['with_errors']} with errors, "
        f"{summary['turns']} turns ({summary['turns_without_reply']} without reply)"
    )
    for key, label in [
        ("greeting_latency_ms", "greeting (stream start -> first media)"),
        ("turn_latency_ms", "turn latency (speech end -> first media)"),
        ("first_played_latency_ms", "speech end -> first reply heard"),
        ("barge_in_latency_ms", "barge-in (onset -> agent silent)"),
    ]:
        s = summary[key]
        print(f"  {label}: p50 {_fmt(s['p50'])} ms, p95 {_fmt(s['p95'])} ms (n={s['n']})")
    if summary["stale_audio_ms_total"]:
        print(f"  stale audio heard after barge-ins: {summary['stale_audio_ms_total']:.0f} ms in total")
    stages = summary.get("stages_ms") or {}
    if stages:
        print("  per stage, from the call records (ms):")
        for stage, s in stages.items():
            print(f"    {stage:<22} p50 {_fmt(s['p50']):>8}   p95 {_fmt(s['p95']):>8}   (n={s['n']})")
