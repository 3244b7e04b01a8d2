"""`python -m services.stt`: run one STT worker."""

from services.stt.worker import start
from voxline.config import SttSettings
from voxline.service import run_worker

if __name__ == "__main__":
    run_worker("stt", SttSettings(), start)
