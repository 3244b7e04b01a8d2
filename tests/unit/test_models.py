"""The GGUF is assembled from its parts only when it hashes right; the server command is sane."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from voxline.llama_server import LlamaServer, cpu_has_avx_vnni, needs_cpu_shim
from voxline.models import ModelError, assemble_gguf, models_dir, package_file


def _parts(tmp_path: Path) -> tuple[list[Path], str]:
    contents = [b"GGUF" + bytes(range(256)) * 40, b"middle part", b"tail"]
    paths = []
    for i, data in enumerate(contents):
        path = tmp_path / f"part{i:02d}.bin"
        path.write_bytes(data)
        paths.append(path)
    return paths, hashlib.sha256(b"".join(contents)).hexdigest()


def test_assembles_verifies_and_reuses(tmp_path: Path) -> None:
    parts, digest = _parts(tmp_path)
    cache = tmp_path / "cache"
    model = assemble_gguf(cache, parts, digest, name="m.gguf")
    assert model.read_bytes() == b"".join(p.read_bytes() for p in parts)
    stamp = model.with_name("m.gguf.sha256")
    assert stamp.read_text().startswith(digest)
    parts[0].write_bytes(b"changed")  # a verified file is trusted without re-reading the parts
    assert assemble_gguf(cache, parts, digest, name="m.gguf") == model
    assert sorted(p.name for p in cache.iterdir()) == ["m.gguf", "m.gguf.sha256"]


def test_mismatch_is_refused_with_a_clear_message(tmp_path: Path) -> None:
    parts, _ = _parts(tmp_path)
    cache = tmp_path / "cache"
    with pytest.raises(ModelError, match=r"refusing to start.*sha256 [0-9a-f]{64}, expected 0{64}.*reinstall"):
        assemble_gguf(cache, parts, "0" * 64, name="m.gguf")
    assert list(cache.iterdir()) == []  # nothing half-written is left for a later start to trust


def test_a_file_changed_after_verification_is_rebuilt(tmp_path: Path) -> None:
    parts, digest = _parts(tmp_path)
    model = assemble_gguf(tmp_path / "cache", parts, digest, name="m.gguf")
    model.write_bytes(b"corrupted on disk")
    assert assemble_gguf(tmp_path / "cache", parts, digest, name="m.gguf").read_bytes().startswith(b"GGUF")


def test_missing_package_says_how_to_fix() -> None:
    with pytest.raises(ModelError, match=r"not installed.*pip install"):
        package_file("no_such_model_package_xyz", "model.bin")


def test_models_dir_is_absolute(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("VOXLINE_MODELS_DIR", raising=False)
    assert models_dir() == tmp_path / "var" / "models"
    assert models_dir("rel") == tmp_path / "rel"


def test_cpu_flags(tmp_path: Path) -> None:
    info = tmp_path / "cpuinfo"
    info.write_text("processor: 0\nflags\t\t: fpu avx2 avx512_vnni\n")
    assert cpu_has_avx_vnni(info) is False
    info.write_text("flags\t\t: fpu avx2 avx_vnni\n")
    assert cpu_has_avx_vnni(info) is True
    assert cpu_has_avx_vnni(tmp_path / "missing") is None
    assert needs_cpu_shim("on") and not needs_cpu_shim("off")


def test_server_command_and_library_shim(tmp_path: Path) -> None:
    server = LlamaServer(tmp_path / "m.gguf", port=5555, shim="on", shim_dir=tmp_path / "shim")
    cmd = server.command()
    assert cmd[0].endswith("llama-server")
    assert ["--port", "5555"] == cmd[cmd.index("--port") : cmd.index("--port") + 2]
    assert "--cache-reuse" in cmd and ["--device", "none"] == cmd[cmd.index("--device") : cmd.index("--device") + 2]
    env = server.environment({"LD_LIBRARY_PATH": "/usr/lib/x"})
    dirs = env["LD_LIBRARY_PATH"].split(":")
    assert dirs[0] == str(tmp_path / "shim") and dirs[-1] == "/usr/lib/x"
    link = tmp_path / "shim" / "libggml-cpu.so.0"
    assert link.is_symlink() and link.resolve().parts[-3:] == ("libggml", "lib64", link.resolve().name)
    assert server.base_url == "http://127.0.0.1:5555/v1"
    plain = LlamaServer(tmp_path / "m.gguf", port=5555, shim="off", shim_dir=tmp_path / "none")
    assert str(tmp_path / "none") not in plain.environment({})["LD_LIBRARY_PATH"]
