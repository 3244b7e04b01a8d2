"""`python -m services.brain`: run one brain (LLM) worker."""

from services.brain.worker import start
from voxline.config import BrainSettings
from voxline.service import run_worker

if __name__ == "__main__":
    # Fields come from the environment; mypy without the pydantic plugin sees them as required.
    run_worker("brain", BrainSettings(), start)  # type: ignore[call-arg]
