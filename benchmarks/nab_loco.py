"""NAB, leave one category out: every choice made on three categories, the fourth scored.

The NAB subset in ``../shared/data/nab`` has four categories. Each candidate configuration (a
small, fixed grid of ``ProcessorParams`` overrides, ``CANDIDATES``) runs once over all 25 files
through ``gridstream``'s backtest, exactly as ``quality_nab.py`` runs the defaults. Then, for each
category in turn:

- *choose* on the other three: the candidate with the best NAB standard score there (NAB's scorer,
  ``--optimizer local``), and the threshold NAB's optimiser picks for it there;
- *score* the held-out category twice: as NAB scores a detector (its optimiser picks the threshold
  on the scored files, the procedure behind every published NAB figure), and at the threshold
  chosen on the other three (nothing from the held-out files at all).

``artificialNoAnomaly`` has no anomaly windows, so NAB's normalised score is undefined there: its
fold reports the false-alarm rows at the chosen threshold instead, and the mean is over the three
folds with windows. Writes ``benchmarks/results/quality_nab_loco.json``.

    python benchmarks/nab_loco.py [--json FILE] [--data DIR]
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np

from benchmarks.quality_nab import (
    RESULTS,
    SHARED,
    nab_files,
    nab_frame,
    nab_score,
    params_with,
    write_results,
)
from models.params import ProcessorParams
from streams.tools.backtest import backtest_frame

# name -> ProcessorParams overrides (NAME=VALUE, as quality_nab.py --param takes them)
_ALL = ProcessorParams().detectors


def _without(name: str) -> str:
    return "detectors=" + ",".join(d for d in _ALL if d != name)


CANDIDATES: dict[str, list[str]] = {
    "defaults": [],
    "absolute-departures": ["relative=none"],
    "relative-residuals-too": ["relative=both"],
    "range-fades-slower": ["nov_in_rate=0.0002"],
    "range-follows-faster": ["nov_out_rate=0.1"],
    "wider-tail": ["tail_quantile=0.95"],
    "longer-incidents": ["cooldown_s=21600"],
    "every-score-shown": ["news_margin=-1"],
    "no-residual": [_without("residual")],
    "no-stuck": [_without("stuck")],
    "one-profile-every-day": ["weekend_days="],
    "flat-residual-scale": ["tod_residual=0"],
}


def score(results: Path, nab_dir: Path, threshold: float | None = None) -> dict:
    """NAB's scorer over the files present in ``results``: standard profile, local optimiser."""
    return nab_score(results, nab_dir, "local", True, "standard", threshold)["standard"]


def subset(src: Path, dst: Path, categories: list[str]) -> Path:
    """A results folder holding only ``categories`` (copied from ``src``)."""
    for cat in categories:
        shutil.copytree(src / cat, dst / cat)
    return dst


def run_candidates(nab_dir: Path, work: Path) -> dict[str, Path]:
    """Backtest every candidate once over all files; its per-file score CSVs under ``work``."""
    files = nab_files(nab_dir)
    frame = nab_frame(files)
    out = {}
    for name, overrides in CANDIDATES.items():
        table, _ = backtest_frame(frame, params_with(overrides), 1_000_000)
        out[name] = work / name
        write_results(frame, table["anomaly_score"].to_numpy(), out[name])
        print(f"  backtest {name}: done", file=sys.stderr)
    return out


def fold(category: str, categories: list[str], runs: dict[str, Path], nab_dir: Path) -> dict:
    """Choose on every category but ``category``; score ``category``."""
    train = [c for c in categories if c != category]
    chosen, best = "", None
    with tempfile.TemporaryDirectory() as tmp:
        for name, path in runs.items():
            r = score(subset(path, Path(tmp) / f"{name}-train", train), nab_dir)
            if best is None or r["normalized"] > best["normalized"]:
                chosen, best = name, r
        assert best is not None
        test_dir = subset(runs[chosen], Path(tmp) / "test", [category])
        nab_way = score(test_dir, nab_dir)
        fixed = score(test_dir, nab_dir, best["threshold"])
    return {
        "held_out": category,
        "chosen": chosen,
        "train_standard": round(best["normalized"], 1),
        "threshold_chosen": best["threshold"],
        "test_standard_nab_threshold": _norm(nab_way),
        "test_standard_fixed_threshold": _norm(fixed),
        "test_windows": fixed["n_windows"],
        "test_tp_windows_fixed": fixed["tp_windows"],
        "test_fp_rows_fixed": fixed["fp_rows"],
    }


def _norm(r: dict) -> float | None:
    return None if r["n_windows"] == 0 else round(float(r["normalized"]), 1)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--json", type=Path, default=RESULTS / "quality_nab_loco.json")
    ap.add_argument("--data", type=Path, default=SHARED / "data", help="the shared data folder")
    args = ap.parse_args(argv)
    nab_dir = args.data / "nab"
    if not (nab_dir / "data").is_dir():
        print(f"NAB data not found under {nab_dir}", file=sys.stderr)
        return 2
    categories = sorted(p.name for p in (nab_dir / "data").iterdir() if p.is_dir())
    with tempfile.TemporaryDirectory() as tmp:
        runs = run_candidates(nab_dir, Path(tmp))
        folds = [fold(c, categories, runs, nab_dir) for c in categories]
        in_sample = {
            name: round(score(path, nab_dir)["normalized"], 1) for name, path in runs.items()
        }
    scored = [f for f in folds if f["test_windows"]]
    report = {
        "benchmark": "nab_leave_one_category_out",
        "candidates": CANDIDATES,
        "folds": folds,
        # every candidate on all four categories: what the procedure picks for the defaults
        "in_sample_standard": in_sample,
        "mean_standard_nab_threshold": round(
            float(np.mean([f["test_standard_nab_threshold"] for f in scored])), 1
        ),
        "mean_standard_fixed_threshold": round(
            float(np.mean([f["test_standard_fixed_threshold"] for f in scored])), 1
        ),
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=1) + "\n")
    print("NAB leave-one-category-out (standard profile; choices made on the other three)")
    print(
        f"{'held out':<22} {'chosen':<20} {'train':>6} {'test (NAB thr)':>15}"
        f" {'test (fixed thr)':>17}"
    )
    for f in folds:
        nab = f["test_standard_nab_threshold"]
        fixed = f["test_standard_fixed_threshold"]
        fixed_s = f"{fixed:.1f}" if fixed is not None else f"{f['test_fp_rows_fixed']} FP rows"
        nab_s = f"{nab:.1f}" if nab is not None else "-"
        print(
            f"{f['held_out']:<22} {f['chosen']:<20} {f['train_standard']:>6.1f} {nab_s:>15}"
            f" {fixed_s:>17}"
        )
    print(
        f"mean over the {len(scored)} folds with windows: "
        f"{report['mean_standard_nab_threshold']} (NAB threshold), "
        f"{report['mean_standard_fixed_threshold']} (threshold chosen on the other three)"
    )
    best = max(in_sample, key=in_sample.__getitem__)
    print(f"in-sample (all four categories, not a headline): {in_sample}; best: {best}")
    print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
