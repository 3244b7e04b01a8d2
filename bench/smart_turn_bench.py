"""Per-decision latency of Smart Turn v3.2 on this machine: features + inference, p50/p95.

    .venv/bin/python bench/smart_turn_bench.py [--runs 50] [--threads 1 2] [--seconds 3]

A decision is what the local STT pays once per pause: numpy log-mel features of the
last 8 s plus one ONNX run. Both parts are timed separately, because the features are
the part we wrote and the model the part we cannot change.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import numpy as np

from services.stt.smart_turn import RATE, SmartTurn, log_mel_features
from voxline.smart_turn_fetch import is_verified, model_path


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.array(values), q))


def bench(threads: int, runs: int, seconds: float) -> None:
    model = SmartTurn(model_path(), threads)
    rng = np.random.default_rng(0)
    audio = (0.1 * rng.standard_normal(int(seconds * RATE))).astype(np.float32)
    model.predict(audio)  # warm-up: the first run allocates
    features_ms: list[float] = []
    total_ms: list[float] = []
    for _ in range(runs):
        started = time.perf_counter()
        log_mel_features(audio)
        features_ms.append((time.perf_counter() - started) * 1000)
        started = time.perf_counter()
        model.predict(audio)
        total_ms.append((time.perf_counter() - started) * 1000)
    print(
        f"threads={threads} runs={runs} audio={seconds:g}s  "
        f"decision p50={statistics.median(total_ms):.1f} ms p95={percentile(total_ms, 95):.1f} ms "
        f"max={max(total_ms):.1f} ms  (features alone p50={statistics.median(features_ms):.1f} ms "
        f"p95={percentile(features_ms, 95):.1f} ms)"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--runs", type=int, default=50)
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--seconds", type=float, default=3.0, help="length of the turn audio (<= 8 s is used)")
    args = parser.parse_args()
    if not is_verified(model_path()):
        print(f"no model at {model_path()}: run `python -m voxline.smart_turn_fetch` first", file=sys.stderr)
        return 1
    for threads in args.threads:
        bench(threads, args.runs, args.seconds)
    return 0


if __name__ == "__main__":
    sys.exit(main())
