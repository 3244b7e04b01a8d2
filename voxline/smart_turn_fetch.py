"""Install-time fetch of the Smart Turn v3.2 end-of-turn model: `python -m voxline.smart_turn_fetch`.

The model (BSD-2, Daily) ships only inside the `pipecat-ai` wheel. Depending on pipecat
would pull a whole voice framework (and its dependency pins) into every worker for one
8.7 MB ONNX file, so the Makefile downloads the pinned wheel once with pip (no deps),
takes that one file out, checks its sha256 and keeps the wheel's license beside it.
Nothing is fetched at run time: the STT worker only reads the verified file.

Idempotent: a file whose hash matches is left alone (hashing 8.7 MB costs ~10 ms, so it
is always re-checked rather than trusted by a stamp). A mismatch is an error, never a
silent re-download, because it means the pinned wheel or the file on disk is not what
was reviewed.
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import os
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from voxline.models import ModelError, models_dir

log = logging.getLogger("voxline.smart_turn_fetch")

PIPECAT_VERSION = "1.14.0"
MODEL_NAME = "smart-turn-v3.2-cpu.onnx"
MODEL_SHA256 = "2bb026316b14a660486a75b1733cd3fbab8c2fd0314dc9af7be49f8cca967e4f"
WHEEL_MEMBER = f"pipecat/audio/turn/smart_turn/data/{MODEL_NAME}"
LICENSE_MEMBER = f"pipecat_ai-{PIPECAT_VERSION}.dist-info/licenses/LICENSE"
LICENSE_NAME = "LICENSE"
DIR_ENV = "VOXLINE_SMART_TURN_DIR"
_CHUNK = 1 << 20


def smart_turn_dir(setting: str = "") -> Path:
    """`setting`, else $VOXLINE_SMART_TURN_DIR, else <models dir>/smart-turn ($VOXLINE_MODELS_DIR)."""
    chosen = setting or os.environ.get(DIR_ENV)
    return Path(chosen).resolve() if chosen else models_dir() / "smart-turn"


def model_path(directory: Path | None = None) -> Path:
    return (directory or smart_turn_dir()) / MODEL_NAME


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def is_verified(path: Path, expected_sha256: str = MODEL_SHA256) -> bool:
    """True when the file exists with the pinned hash; raise ModelError when it exists with another."""
    if not path.exists():
        return False
    actual = sha256_of(path)
    if actual != expected_sha256:
        raise ModelError(
            f"{path} has sha256 {actual}, expected {expected_sha256} (Smart Turn from pipecat-ai=={PIPECAT_VERSION}). "
            f"Delete it and run `python -m voxline.smart_turn_fetch` again."
        )
    return True


def download_wheel(into: Path, version: str = PIPECAT_VERSION) -> Path:
    """The pinned pipecat-ai wheel via pip itself (honours the user's index and proxy config)."""
    cmd = [sys.executable, "-m", "pip", "download", f"pipecat-ai=={version}", "--no-deps", "--only-binary=:all:"]
    cmd += ["--disable-pip-version-check", "-q", "-d", str(into)]
    result = subprocess.run(cmd, capture_output=True, text=True, check=False)
    wheels = sorted(into.glob(f"pipecat_ai-{version}-*.whl"))
    if result.returncode != 0 or not wheels:
        raise ModelError(f"pip could not download pipecat-ai=={version}: {result.stderr.strip()[-800:]}")
    return wheels[0]


def extract(wheel: Path, directory: Path, expected_sha256: str = MODEL_SHA256) -> Path:
    """Copy the model and its license out of `wheel`; the model lands atomically and only if its hash matches."""
    dest = model_path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f"{dest.name}.{os.getpid()}.tmp")
    try:
        with zipfile.ZipFile(wheel) as zf:
            names = set(zf.namelist())
            if WHEEL_MEMBER not in names:
                raise ModelError(f"{wheel.name} has no {WHEEL_MEMBER}; is it pipecat-ai=={PIPECAT_VERSION}?")
            digest = hashlib.sha256()
            with zf.open(WHEEL_MEMBER) as src, tmp.open("wb") as out:
                while chunk := src.read(_CHUNK):
                    digest.update(chunk)
                    out.write(chunk)
            actual = digest.hexdigest()
            if actual != expected_sha256:
                raise ModelError(
                    f"{WHEEL_MEMBER} in {wheel.name} has sha256 {actual}, expected {expected_sha256}; not installed."
                )
            if LICENSE_MEMBER in names:
                (directory / LICENSE_NAME).write_bytes(zf.read(LICENSE_MEMBER))
            else:
                raise ModelError(f"{wheel.name} has no {LICENSE_MEMBER}; the model must not ship without its license")
        tmp.replace(dest)  # a concurrent reader sees no file or the whole verified one
    finally:
        tmp.unlink(missing_ok=True)
    return dest


def fetch(directory: Path | None = None, wheel: Path | None = None, expected_sha256: str = MODEL_SHA256) -> Path:
    """The verified model in `directory`, downloading the pinned wheel only when it is absent."""
    target = directory or smart_turn_dir()
    dest = model_path(target)
    if is_verified(dest, expected_sha256) and (target / LICENSE_NAME).exists():
        log.info("smart turn model already present and verified: %s", dest)
        return dest
    if wheel is not None:
        return extract(wheel, target, expected_sha256)
    with tempfile.TemporaryDirectory(prefix="voxline-pipecat-") as tmp:
        return extract(download_wheel(Path(tmp)), target, expected_sha256)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--dir", default="", help=f"target directory (default: ${DIR_ENV} or var/models/smart-turn)")
    parser.add_argument("--wheel", type=Path, help="use this pipecat-ai wheel instead of downloading it")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        path = fetch(smart_turn_dir(args.dir), args.wheel)
    except ModelError as exc:
        print(f"smart_turn_fetch: error: {exc}", file=sys.stderr)
        return 1
    print(f"smart turn model: {path} ({path.stat().st_size} bytes, sha256 {MODEL_SHA256[:12]}…)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
