"""The `voxline` command: `up` starts the dev stack, `call` places a simulated Twilio call,
`keys` makes, lists and revokes REST API keys, `settings` prints every setting with its
default."""

from __future__ import annotations

import argparse
import asyncio
import logging
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


KEYS_CONNECT_TIMEOUT_S = 5.0


async def _keys(args: argparse.Namespace) -> int:
    """Straight to the key store over NATS, not through a gateway: the first key of a
    gateway that needs one can only come this way."""
    from datetime import UTC, datetime

    from services.gateway.api_keys import ApiKeyStore, InvalidKeyRequest
    from voxline.bus import Bus
    from voxline.config import CommonSettings
    from voxline.nats_auth import redact_url

    settings = CommonSettings()  # the NATS user, password and CA of the environment: run it where a gateway runs
    bus = Bus("voxline-keys")
    bus.kv_replicas = settings.kv_replicas
    where = redact_url(args.nats_url)
    try:
        connecting = bus.connect(
            args.nats_url,
            user=settings.nats_user,
            password=settings.nats_password,
            tls_ca_file=settings.nats_tls_ca_file,
        )
        await asyncio.wait_for(connecting, KEYS_CONNECT_TIMEOUT_S)
    except Exception as exc:
        reason = type(exc).__name__
        print(
            f"voxline keys: cannot reach NATS at {where} ({reason}): set --nats-url, and VOXLINE_NATS_USER and "
            "VOXLINE_NATS_PASSWORD to the gateway's when the server asks for them",
            file=sys.stderr,
        )
        return 2
    store = ApiKeyStore(bus)
    try:
        if args.keys_command == "create":
            record, key = await store.create(args.name, args.scope)
            print(f"id:     {record.id}\nname:   {record.name}\nscopes: {','.join(record.scopes)}")
            print(f"key:    {key}")
            print("The key is shown this once and stored only hashed: keep it now.", file=sys.stderr)
        elif args.keys_command == "list":
            print(f"{'ID':<14}{'NAME':<24}{'SCOPES':<10}{'CREATED (UTC)':<22}REVOKED")
            for r in await store.all():
                created = datetime.fromtimestamp(r.created_at_us / 1e6, UTC).strftime("%Y-%m-%d %H:%M:%S")
                print(f"{r.id:<14}{r.name:<24}{','.join(r.scopes):<10}{created:<22}{'yes' if r.revoked else 'no'}")
        else:
            record = await store.revoke(args.id)
            print(f"revoked {record.id} ({record.name}): every gateway refuses it within seconds")
    except InvalidKeyRequest as exc:
        print(f"voxline keys: {exc}", file=sys.stderr)
        return 1
    except Exception as exc:  # NATS without JetStream, a timeout: said plainly, no traceback
        print(f"voxline keys: the key store at {where} failed: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    finally:
        await bus.close()
    return 0


def _cmd_keys(args: argparse.Namespace) -> int:
    # The bus logs for services (each connect retry, the disconnect at close); a command
    # says what went wrong once, itself.
    logging.getLogger("voxline.bus").disabled = True
    return asyncio.run(_keys(args))


def _add_keys_arguments(keys: argparse.ArgumentParser) -> None:
    from services.gateway.api_keys import SCOPES
    from voxline.config import CommonSettings

    keys.add_argument(
        "--nats-url", default=CommonSettings().nats_url, help="the NATS the gateways use (default VOXLINE_NATS_URL)"
    )
    sub = keys.add_subparsers(dest="keys_command", required=True)
    create = sub.add_parser("create", help="make a key and print it once, with its id")
    create.add_argument("--name", required=True, help="what the key is for (shown by list)")
    create.add_argument(
        "--scope", required=True, choices=SCOPES, help="read: GET /v1/*; calls: read + POST /v1/calls; admin: all"
    )
    sub.add_parser("list", help="id, name, scopes, created, revoked of every key (never a key or its hash)")
    revoke = sub.add_parser("revoke", help="revoke a key by its id: refused by every gateway within seconds")
    revoke.add_argument("id", help="the key's id (from create or list)")
    keys.set_defaults(func=_cmd_keys)


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

    keys = sub.add_parser("keys", help="REST API keys in the key store: create, list, revoke")
    _add_keys_arguments(keys)

    agents = sub.add_parser("agents", help="agents through the REST API: apply -f DIR (TOML), list, get, delete")
    from voxline.agents_cli import add_arguments as add_agents_arguments

    add_agents_arguments(agents)

    calls = sub.add_parser("calls", help="calls through the REST API: list, get ID, events ID, place")
    from voxline.calls_cli import add_arguments as add_calls_arguments

    add_calls_arguments(calls)

    settings = sub.add_parser("settings", help="print every setting, its default and meaning")
    settings.set_defaults(func=_cmd_settings)

    args = parser.parse_args(argv)
    result: int = args.func(args)
    return result


if __name__ == "__main__":
    sys.exit(main())
