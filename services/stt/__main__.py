"""`python -m services.stt`: run one STT worker."""

from services.stt.worker import start
from voxline.config import SttSettings
from voxline.service import run_worker

if __name__ == "__main__":
    # Fields come from the environment; mypy without the pydantic plugin sees them as required.
    run_worker("stt", SttSettings(), start)  # type: ignore[call-arg]
