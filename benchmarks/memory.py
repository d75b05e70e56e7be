"""Resident memory of the core: with N active entities once their windows are full, and over time.

Each measurement runs in a fresh child process (``python -m benchmarks.memory --child ...``), so
nothing else the bench did counts. The child feeds ``GridProcessor`` one reading per entity per
step (15 simulated minutes apart) and reads VmRSS from /proc after each sampled step. Windows hold
``ProcessorParams.window`` readings (16), so 20 steps fill them; the long run keeps going and
reports the slope of RSS over the second half (MB per million readings): flat memory is a slope
near zero.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time

import numpy as np

STEP_MS = 900_000


def _status(field: str) -> float:
    with open("/proc/self/status") as f:  # not getrusage: ru_maxrss survives exec
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024.0
    raise RuntimeError(f"{field} not in /proc/self/status")


def _child(entities: int, steps: int, every: int) -> dict[str, object]:
    from models.processor import GridProcessor
    from schemas.batch import ReadingBatch

    base_rss = _status("VmRSS")
    proc = GridProcessor()
    n = entities
    ids = np.array([f"m{i:07d}" for i in range(n)], dtype=object)
    kinds = np.array(["meter"] * n, dtype=object)
    nan = np.full(n, np.nan)
    quality = np.full(n, None, dtype=object)
    # start far enough back that the last step is still in the past
    base = int(time.time() * 1000) - (steps + 1) * STEP_MS
    rng = np.random.default_rng(0)
    phase = rng.uniform(0, 2 * np.pi, n)
    samples: list[tuple[int, float]] = []
    for k in range(steps):
        ts = np.full(n, base + k * STEP_MS, dtype=np.int64)
        v = 1.0 + 0.3 * np.sin(phase + k * 2 * np.pi / 96) + 0.05 * rng.standard_normal(n)
        batch = ReadingBatch(ids, kinds, ts, v, nan, 230.0 + nan * 0, nan, nan, nan, quality,
                             np.arange(n))
        proc.process_batch(batch, int(ts[0]))
        if (k + 1) % every == 0 or k + 1 == steps:
            samples.append(((k + 1) * n, _status("VmRSS")))
    return {
        "entities": n,
        "steps": steps,
        "rss_mb": samples[-1][1],
        "peak_rss_mb": _status("VmHWM"),
        "state_mb": proc.state.nbytes() / 1e6,
        "imports_mb": base_rss,
        "samples": samples,
    }


def _spawn(entities: int, steps: int, every: int) -> dict[str, object]:
    out = subprocess.run(
        [sys.executable, "-m", "benchmarks.memory", "--child", str(entities), str(steps),
         str(every)],
        capture_output=True, text=True, timeout=1800, check=True,
    )
    return json.loads(out.stdout)


def rss_by_entities(counts: tuple[int, ...] = (1000, 10_000, 100_000)) -> dict[str, object]:
    """RSS (MB) with each number of warm entities (20 steps: windows full)."""
    out: dict[str, object] = {}
    for n in counts:
        r = _spawn(n, 20, 20)
        out[str(n)] = {k: round(r[k], 1) for k in ("rss_mb", "peak_rss_mb", "state_mb",  # type: ignore[arg-type]
                                                   "imports_mb")}
    return out


def long_run(entities: int = 10_000, steps: int = 400) -> dict[str, object]:
    """RSS sampled over ``steps`` batches; slope (MB per million readings) of the second half."""
    r = _spawn(entities, steps, max(1, steps // 40))
    samples = r["samples"]
    half = [s for s in samples if s[0] >= samples[-1][0] / 2]  # type: ignore[index]
    x = np.array([s[0] for s in half], dtype=float) / 1e6
    y = np.array([s[1] for s in half], dtype=float)
    slope = float(np.polyfit(x, y, 1)[0]) if len(half) > 2 else float("nan")
    return {
        "entities": entities,
        "readings": entities * steps,
        "rss_mb_start": round(samples[0][1], 1),  # type: ignore[index]
        "rss_mb_half": round(half[0][1], 1),
        "rss_mb_end": round(samples[-1][1], 1),  # type: ignore[index]
        "slope_mb_per_million_readings": round(slope, 2),
        "samples": [(int(a), round(b, 1)) for a, b in samples],  # type: ignore[misc]
    }


if __name__ == "__main__":
    if len(sys.argv) == 5 and sys.argv[1] == "--child":
        print(json.dumps(_child(*(int(a) for a in sys.argv[2:]))))
    else:
        print(json.dumps({"by_entities": rss_by_entities(), "long_run": long_run()}, indent=1))
