"""The `voxline` command: `up` starts the dev stack, `call` places a simulated Twilio call,
`settings` prints every setting with its default."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Mapping
from pathlib import Path

PROFILES = ("fake", "local", "cloud")


def resolve_profile(flag: str | None, environ: Mapping[str, str]) -> str:
    """`--profile` if given, else `VOXLINE_PROFILE`, else the offline default: the rule
    every process follows (`voxline/config.py`), so `make run` and `voxline up` agree."""
    from voxline.config import DEFAULT_PROFILE

    profile = flag or environ.get("VOXLINE_PROFILE") or DEFAULT_PROFILE
    if profile not in PROFILES:
        raise SystemExit(f"voxline: unknown profile {profile!r} (VOXLINE_PROFILE or --profile): use one of {PROFILES}")
    return profile


def _cmd_up(args: argparse.Namespace) -> int:
    from voxline.devstack import run_foreground

    profile = resolve_profile(args.profile, os.environ)
    return run_foreground(profile, args.port, args.nats_url, Path(args.data_dir), args.replicas)


def _cmd_call(args: argparse.Namespace) -> int:
    from voxline.simulator.command import run_call_command

    return asyncio.run(run_call_command(args))


def _cmd_bench(args: argparse.Namespace) -> int:
    from voxline.bench.command import run_bench

    return run_bench(args)


def _cmd_chaos(args: argparse.Namespace) -> int:
    from voxline.endurance import run_chaos

    return run_chaos(args)


def _cmd_soak(args: argparse.Namespace) -> int:
    from voxline.endurance import run_soak

    return run_soak(args)


def _cmd_settings(_: argparse.Namespace) -> int:
    from voxline.config import ALL_SETTINGS, documented

    for service, cls in ALL_SETTINGS.items():
        print(f"[{service}]")
        for env, default, description in documented(cls):
            print(f"  {env:<36} {default!r:<28} {description}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="voxline", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    up = sub.add_parser("up", help="start nats-server and the five services; Ctrl-C stops them")
    up.add_argument("--profile", default=None, choices=PROFILES, help="overrides VOXLINE_PROFILE (default local)")
    up.add_argument("--port", type=int, default=int(os.environ.get("VOXLINE_HTTP_PORT", "8080")))
    up.add_argument("--nats-url", default=os.environ.get("VOXLINE_NATS_URL", ""), help="use this NATS server")
    up.add_argument("--data-dir", default="var/nats", help="JetStream storage of the embedded server")
    up.add_argument(
        "--replicas",
        type=int,
        default=1,
        help="instances of every service (gateways on --port, --port+1, ...); each one's /status lists its calls",
    )
    up.set_defaults(func=_cmd_up)

    call = sub.add_parser("call", help="place a simulated Twilio call against a gateway")
    from voxline.simulator.command import add_call_arguments

    add_call_arguments(call)
    call.set_defaults(func=_cmd_call)

    bench = sub.add_parser("bench", help="caller simulator at 1..200 concurrent calls: latency table, JSON, plots")
    from voxline.bench.command import add_bench_arguments

    add_bench_arguments(bench)
    bench.set_defaults(func=_cmd_bench)

    chaos = sub.add_parser("chaos", help="calls for minutes while a random process is killed every few seconds")
    soak = sub.add_parser("soak", help="many calls for many minutes: memory and per-call state, start to end")
    from voxline.endurance import add_arguments

    add_arguments(chaos, soak)
    chaos.set_defaults(func=_cmd_chaos)
    soak.set_defaults(func=_cmd_soak)

    settings = sub.add_parser("settings", help="print every setting, its default and meaning")
    settings.set_defaults(func=_cmd_settings)

    args = parser.parse_args(argv)
    result: int = args.func(args)
    return result


if __name__ == "__main__":
    sys.exit(main())
