"""Runs a scripted caller against a gateway and turns what happened into a CallResult."""

from __future__ import annotations

import asyncio
import functools
import ssl
import subprocess
import time
import wave
from collections.abc import Callable
from dataclasses import dataclass

import httpx
import numpy as np
import websockets
from websockets.exceptions import InvalidStatus, WebSocketException

from voxline.audio import TELEPHONY_RATE
from voxline.simulator.connect_action import describe, follow_connect_action
from voxline.simulator.coverage import turn_coverage
from voxline.simulator.ivr import KeypadEar
from voxline.simulator.line import FollowAction, NewStream, PhoneLine, SpeechLog
from voxline.simulator.placement import (
    PlacementError,
    fetch_record,
    place_call,
    stream_parameters,
    upgrade_headers,
)
from voxline.simulator.playback import Chunk, measure_barge_in
from voxline.simulator.results import BargeInResult, CallResult, PlayedEntry, StreamBreak, TurnResult
from voxline.simulator.script import CallScript, Utterance
from voxline.simulator.twilio_stream import StreamTarget, TwilioStream
from voxline.simulator.voice import SpeechFrames, as_pcm16, read_wav, synthesize

DTMF_GAP_S = 0.2


@functools.cache
def _tls_context() -> ssl.SSLContext:
    """One CA bundle load per process: httpx loads it per client (~30 ms of CPU), which
    adds up when hundreds of simulated calls start within a few seconds."""
    return ssl.create_default_context()


@dataclass
class _Spoken:
    index: int
    utterance: Utterance
    log: SpeechLog
    baseline_turn: int  # newest turn the gateway had named when the caller began


def prepare_audio(utterance: Utterance) -> SpeechFrames:
    if utterance.parts:
        gap = np.zeros(int(TELEPHONY_RATE * utterance.gap_ms / 1000), dtype=np.int16)
        pieces: list[np.ndarray] = []
        for i, part in enumerate(utterance.parts):
            pieces.extend([gap, synthesize(part)] if i else [synthesize(part)])
        return SpeechFrames.from_pcm(np.concatenate(pieces))
    if utterance.pcm8k is not None:
        return SpeechFrames.from_pcm(as_pcm16(utterance.pcm8k))
    if utterance.wav is not None:
        return SpeechFrames.from_pcm(read_wav(utterance.wav))
    if utterance.text is not None:
        return SpeechFrames.from_pcm(synthesize(utterance.text))
    return SpeechFrames([], [])


async def run_call(
    base_url: str,
    script: CallScript,
    *,
    auth_token: str | None = None,
    clock: Callable[[], float] = time.monotonic,
    prepared: list[SpeechFrames] | None = None,
) -> CallResult:
    """Place one call. `prepared` is the utterances' audio made in advance (one per
    utterance, shareable between calls): a load generator must not synthesise per call."""
    call_sid = script.call_sid or ""
    result = CallResult(call_sid=call_sid, agent_id=script.agent_id)
    try:
        if prepared is not None and len(prepared) == len(script.utterances):
            audio = prepared
        else:
            audio = await asyncio.to_thread(lambda: [prepare_audio(u) for u in script.utterances])
    except (OSError, ValueError, EOFError, subprocess.CalledProcessError, wave.Error) as exc:
        result.errors.append(f"could not prepare the caller's audio: {exc!r}")
        return result
    async with httpx.AsyncClient(timeout=10.0, verify=_tls_context()) as http:
        try:
            target = await place_call(http, base_url, script, auth_token)
        except PlacementError as exc:
            result.errors.append(str(exc))
            return result
        result.stream_url = target.url
        try:
            ws = await websockets.connect(
                target.url,
                open_timeout=10.0,
                compression=None,
                additional_headers=upgrade_headers(target.url, auth_token),
            )
        except InvalidStatus as exc:
            result.errors.append(f"stream handshake refused: HTTP {exc.response.status_code}")
            return result
        except (OSError, WebSocketException, TimeoutError) as exc:
            result.errors.append(f"stream connect to {target.url} failed: {exc!r}")
            return result
        line = PhoneLine(ws, TwilioStream(call_sid, script.account_sid or ""), clock)
        line.malformed_after_ms = script.malformed_frame_after_ms
        line.noise = script.line_noise
        if any(u.after_keys for u in script.utterances):
            line.keypad = KeypadEar()
        line.follow_action = _twilio_follows(line, http, target, script, auth_token, result)
        result.stream_sid = line.stream.stream_sid
        spoken: list[_Spoken] = []
        try:
            await line.start(stream_parameters(target.parameters, script))
            await _converse(line, script, audio, spoken, result)
        finally:
            await line.hang_up()
        _summarize(line, spoken, result)
        # A refused stream may never get a record: ask once instead of polling.
        timeout = script.record_timeout_s if result.accepted else 0.0
        result.record = await fetch_record(http, base_url, call_sid, timeout, result.notes)
    return result


async def _converse(
    line: PhoneLine, script: CallScript, audio: list[SpeechFrames], spoken: list[_Spoken], result: CallResult
) -> None:
    utterances = script.utterances
    first_barges = bool(utterances) and utterances[0].barge_in_after_ms is not None
    if script.wait_for_greeting and not first_barges:
        if not await line.wait_turn_finished(-1, 0.0, script.greeting_timeout_s):
            result.notes.append(f"no greeting fully played within {script.greeting_timeout_s:.0f}s")
    reply_since = line.t0  # replies to barge into start arriving after this
    keys_seen = 0  # keys the IVR heard that an earlier utterance answered
    for i, (utt, frames) in enumerate(zip(utterances, audio, strict=True)):
        if line.closed:
            result.errors.append(f"stream closed by the gateway before utterance {i}")
            return
        if utt.after_keys:
            if not await _await_keys(line, utt.after_keys, keys_seen, script.reply_timeout_s):
                result.errors.append(f"utterance {i}: keys {utt.after_keys!r} not heard")
                return
            keys_seen = len(line.keypad.pressed(line.clock())) if line.keypad else 0
            await line.wait_silence(utt.pause_ms / 1000.0, script.reply_timeout_s)
        elif utt.barge_in_after_ms is not None:
            chunk = await line.wait_reply_started(reply_since, script.reply_timeout_s)
            if chunk is None:
                result.errors.append(f"utterance {i}: no reply started to barge into")
            else:
                await line.sleep_until(chunk.start + utt.barge_in_after_ms / 1000.0)
        elif i > 0 or script.wait_for_greeting:
            # A caller who waits for the reply waits for a pause in the agent's voice, not a
            # fixed time after the last mark: a continuation after a gap is heard out.
            await line.wait_silence(utt.pause_ms / 1000.0, script.reply_timeout_s)
        else:
            await asyncio.sleep(utt.pause_ms / 1000.0)
        baseline = line.max_turn_seen
        for digit in utt.dtmf or "":
            line.press(digit)
            await asyncio.sleep(DTMF_GAP_S)
        if not utt.has_speech:
            continue
        log = line.speak(frames)
        await line.wait_spoken(log, frames.duration_ms / 1000.0 + 5.0)
        spoken.append(_Spoken(i, utt, log, baseline))
        reply_since = log.end or log.last_frame or line.clock()
        nxt = utterances[i + 1] if i + 1 < len(utterances) else None
        if nxt is not None and nxt.barge_in_after_ms is not None:
            continue  # the next utterance interrupts this reply instead of waiting for it
        # A backchannel gets no answer of its own: wait for the reply it talked over (the
        # newest turn at its start) to end, or for a new answer if the agent gave one.
        after = baseline if utt.expects_reply else baseline - 1
        if not await line.wait_turn_finished(after, reply_since, script.reply_timeout_s):
            result.errors.append(f"utterance {i}: reply not fully played within {script.reply_timeout_s:.0f}s")
    if script.hang_up_when_quiet:
        await line.wait_silence(script.trailing_silence_ms / 1000.0, script.reply_timeout_s)
    else:
        await asyncio.sleep(script.trailing_silence_ms / 1000.0)


async def _await_keys(line: PhoneLine, keys: str, seen: int, timeout: float) -> bool:
    """Until the agent's audio has played `keys` after the first `seen` keys heard."""
    ear = line.keypad
    if ear is None:
        return False
    return await line.wait_for(lambda: keys in ear.pressed(line.clock())[seen:] or line.closed, timeout) and (
        keys in ear.pressed(line.clock())[seen:]
    )


def _twilio_follows(
    line: PhoneLine,
    http: httpx.AsyncClient,
    target: StreamTarget,
    script: CallScript,
    auth_token: str | None,
    result: CallResult,
) -> FollowAction | None:
    """What Twilio does when the stream ends under the caller: the `<Connect action>`, and
    a new stream if it answers with one (see `connect_action`)."""
    if not target.action:
        return None
    action = target.action

    async def follow() -> NewStream | None:
        nonlocal action
        lost = line.clock()
        brk = StreamBreak(at_ms=round((lost - line.t0) * 1000.0, 1), close_code=line.ws.close_code)
        result.stream_breaks.append(brk)
        step = await follow_connect_action(http, action, script, auth_token)
        if not isinstance(step, StreamTarget):
            brk.then = describe(step)
            return None
        brk.then = "<Connect><Stream>"
        try:
            ws = await websockets.connect(
                step.url, open_timeout=10.0, compression=None, additional_headers=upgrade_headers(step.url, auth_token)
            )
        except (InvalidStatus, OSError, WebSocketException, TimeoutError) as exc:
            brk.then += f" (connect failed: {exc!r})"
            return None
        action = step.action or action
        brk.resumed_at_ms = round((line.clock() - line.t0) * 1000.0, 1)
        return (
            ws,
            TwilioStream(script.call_sid or "", script.account_sid or ""),
            stream_parameters(step.parameters, script),
        )

    return follow


def _reply_chunks(chunks: list[Chunk], onset: float, end: float, baseline: int) -> tuple[int | None, list[Chunk], int]:
    """The reply to an utterance, and how many replies started while the caller still talked.

    The reply is the first turn newer than `baseline` whose audio began after the caller's
    speech ended; a turn that began mid-utterance is an early (false end-of-turn) reply and
    is only taken when nothing came after. Audio whose mark never arrived has no turn and
    only counts when no named reply exists at all.
    """
    first_seen: dict[int, float] = {}
    for c in chunks:
        if c.turn_id is not None and c.turn_id > baseline and c.received_at >= onset:
            first_seen.setdefault(c.turn_id, c.received_at)
    early = sorted(t for t, at in first_seen.items() if at < end)
    late = sorted(t for t, at in first_seen.items() if at >= end)
    turn = late[0] if late else (early[0] if early else None)
    if turn is not None:
        return turn, [c for c in chunks if c.turn_id == turn], len(early)
    return None, [c for c in chunks if c.received_at >= end and c.turn_id is None], 0


def _summarize(line: PhoneLine, spoken: list[_Spoken], result: CallResult) -> None:
    t0 = line.t0

    def rel(t: float | None) -> float | None:
        return None if t is None else round((t - t0) * 1000.0, 1)

    def ms(a: float | None, b: float | None) -> float | None:
        return None if a is None or b is None else round((b - a) * 1000.0, 1)

    chunks = line.playback.chunks
    heard = line.playback.played()
    stops = line.playback.voice_stops()
    mark_names = [m.name for m in line.playback.marks]
    if chunks:
        result.greeting_latency_ms = ms(t0, chunks[0].received_at)
    for s in spoken:
        log = s.log
        onset = log.onset if log.onset is not None else log.first_frame
        end = log.end if log.end is not None else log.last_frame
        turn, reply, early = _reply_chunks(chunks, onset or 0.0, end or 0.0, s.baseline_turn)
        keys = {(c.received_at, c.start) for c in reply}
        reply_heard = [h for h in heard if (h.received_at, h.start) in keys]
        cov = turn_coverage(turn, heard, mark_names) if turn is not None else None
        result.turns.append(
            TurnResult(
                utterance=s.index,
                text=s.utterance.label(),
                speech_onset_ms=rel(onset),
                speech_end_ms=rel(end),
                turn_id=turn,
                first_media_latency_ms=ms(end, min((c.received_at for c in reply), default=None)),
                first_played_latency_ms=ms(end, min((c.start for c in reply_heard), default=None)),
                reply_audio_ms=round(sum(c.samples for c in reply) / 8.0, 1),
                reply_played_ms=round(sum(c.duration for c in reply_heard) * 1000.0, 1),
                completed=turn is not None
                and any(
                    m.parsed is not None and m.parsed.turn_end and m.parsed.turn_id == turn and not m.by_clear
                    for m in line.echoed
                ),
                barge_in=s.utterance.barge_in_after_ms is not None,
                early_replies=early,
                lost_audio_ms=None if cov is None else round(cov.lost_ms, 1),
                repeated_audio_ms=None if cov is None else round(cov.repeated_ms, 1),
            )
        )
        if s.utterance.barge_in_after_ms is not None and onset is not None:
            b = measure_barge_in(onset, heard, stops)
            result.barge_ins.append(
                BargeInResult(
                    utterance=s.index,
                    onset_ms=rel(onset) or 0.0,
                    interrupted_turn=b.interrupted_turn,
                    latency_ms=None if b.latency_ms is None else round(b.latency_ms, 1),
                    stopped_by=b.stopped_by,
                    cancelled_audio_heard_after_ms=round(b.stale_audio_ms, 1),
                    interrupted_played_ms={}
                    if b.interrupted_turn is None
                    else turn_coverage(b.interrupted_turn, heard, mark_names).by_sentence(),
                )
            )
    result.played = [PlayedEntry(rel(c.start) or 0.0, rel(c.end) or 0.0, c.turn_id, c.cut, c.mark) for c in heard]
    result.send_lateness_ms = dict(line.send_lateness_ms)
    result.clears = line.clears
    result.marks_received = line.marks_received
    result.marks_echoed = [m.name for m in line.echoed]
    result.media_received = line.media_received
    result.media_sent = line.stream.chunks_sent
    result.duration_ms = ms(t0, line.clock()) or 0.0
    result.closed_by_gateway = line.closed_by_gateway
    result.keys_heard = line.keypad.pressed(line.clock()) if line.keypad is not None else ""
    if line.closed_by_gateway:
        result.close_code = line.ws.close_code
        result.close_reason = line.ws.close_reason or None
    result.accepted = not (line.closed_by_gateway and line.media_received == 0)
    if line.closed_by_gateway:
        result.notes.append(f"gateway closed the stream: code {result.close_code} {result.close_reason or ''}".strip())
    result.errors.extend(f"gateway sent a bad frame: {e}" for e in line.gateway_errors)


async def run_calls(
    base_url: str,
    scripts: list[CallScript],
    *,
    auth_token: str | None = None,
    stagger_ms: int = 150,
    on_result: Callable[[CallResult], None] | None = None,
) -> list[CallResult]:
    """Run calls concurrently, staggered so they do not all hit the gateway in one tick."""

    async def one(i: int, script: CallScript) -> CallResult:
        await asyncio.sleep(i * stagger_ms / 1000.0)
        try:
            result = await run_call(base_url, script, auth_token=auth_token)
        except Exception as exc:  # one broken call must not sink the whole batch
            result = CallResult(call_sid=script.call_sid or "", agent_id=script.agent_id)
            result.errors.append(f"simulator crashed: {exc!r}")
        if on_result is not None:
            on_result(result)
        return result

    return list(await asyncio.gather(*(one(i, s) for i, s in enumerate(scripts))))
