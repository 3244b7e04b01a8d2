"""`python -m services.tts`: run one TTS worker."""

from services.tts.worker import start
from voxline.config import TtsSettings
from voxline.service import run_worker

if __name__ == "__main__":
    # Fields come from the environment; mypy without the pydantic plugin sees them as required.
    run_worker("tts", TtsSettings(), start)  # type: ignore[call-arg]
