"""Measure LiteRT latency per face and the memory of a LiteRT-only process.

    python -m models.benchmark [--store DIR] [--tflite PATH] [--batch-sizes 1 4] [--threads 1]

Imports neither TensorFlow nor Keras, so the resident memory it reports is
what the edge agent's classifier costs (plus the Python interpreter, numpy
and OpenCV).  Inputs are real FER2013 faces only if you pass --npz; random
faces take exactly the same time through this network.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from runtime.registry import ModelRegistry, default_store
from runtime.tflite_runner import TFLiteEmotionModel


@dataclass(frozen=True)
class LatencyResult:
    """Timing of repeated ``predict`` calls on batches of one size."""

    batch_size: int
    median_call_ms: float
    p90_call_ms: float

    @property
    def per_face_ms(self) -> float:
        return self.median_call_ms / self.batch_size


def measure_latency(model: TFLiteEmotionModel, batch_size: int, repeats: int = 300, warmup: int = 30) -> LatencyResult:
    """Median and 90th-percentile wall time of ``model.predict`` on a batch of ``batch_size`` faces."""
    batch = np.random.default_rng(0).uniform(-1.0, 1.0, size=(batch_size, *model.face_shape)).astype(np.float32)
    for _ in range(warmup):  # the first calls pay for allocation and cache warm-up
        model.predict(batch)
    durations_ms = []
    for _ in range(repeats):
        start = time.perf_counter()
        model.predict(batch)
        durations_ms.append((time.perf_counter() - start) * 1000.0)
    deciles = statistics.quantiles(durations_ms, n=10)
    return LatencyResult(batch_size, statistics.median(durations_ms), deciles[-1])


def process_memory_bytes() -> dict[str, int]:
    """Current (VmRSS) and peak (VmHWM) resident memory of this process, from /proc (Linux)."""
    wanted = {"VmRSS": "rss", "VmHWM": "peak_rss"}
    memory = {}
    with open("/proc/self/status", encoding="ascii") as status:
        for line in status:
            key, _, value = line.partition(":")
            if key in wanted:
                memory[wanted[key]] = int(value.split()[0]) * 1024  # reported in kB
    return memory


def _default_tflite_path(store: Path | None) -> Path:
    registry = ModelRegistry(store if store is not None else default_store())
    entry = registry.current()
    if entry is None:
        raise SystemExit(f"no current model in {registry.store}; pass --tflite or import one first")
    registry.verify(entry)
    return registry.path_of(entry, "tflite")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m models.benchmark", description=__doc__.splitlines()[0])
    parser.add_argument("--store", type=Path, default=None)
    parser.add_argument("--tflite", type=Path, default=None, help="model file (default: the store's current)")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 4])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=300)
    arguments = parser.parse_args(argv)

    path = arguments.tflite or _default_tflite_path(arguments.store)
    model = TFLiteEmotionModel(path, num_threads=arguments.threads)
    print(f"{path} ({path.stat().st_size} bytes), {arguments.threads} thread(s)")
    for batch_size in arguments.batch_sizes:
        result = measure_latency(model, batch_size, repeats=arguments.repeats)
        print(
            f"batch {batch_size:>3}: {result.per_face_ms:.3f} ms/face "
            f"(call median {result.median_call_ms:.3f} ms, p90 {result.p90_call_ms:.3f} ms)"
        )
    memory = process_memory_bytes()
    print(
        f"process RSS {memory['rss'] / 2**20:.1f} MiB (peak {memory['peak_rss'] / 2**20:.1f} MiB); "
        f"tensorflow imported: {'tensorflow' in sys.modules}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
