"""`python -m services.orchestrator`: the per-call state owner."""

from services.orchestrator.worker import start
from voxline.config import OrchestratorSettings
from voxline.service import run_worker

if __name__ == "__main__":
    run_worker("orchestrator", OrchestratorSettings(), start)
