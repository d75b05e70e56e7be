"""What a closed balance interval says: a row per parent, and ``balance`` events naming suspects.

An incident of a parent opens at its first alarming interval and lasts while alarms come less
than ``cooldown`` intervals apart: one event per incident. The event carries the loss ratio, the
expected ratio, the deviation and since when (the interval the CUSUM started rising), and ranks
the children that best explain the gap, in kW:

- energy missing (parent > children): a child whose registration dropped below its own
  time-of-day profile (theft by bypass, a meter reading low), or a child mapped away from this
  parent since the onset (its consumption still flows here);
- energy in excess (children > parent): a child mapped to this parent since the onset (it may
  not be here at all), or a child whose registration rose.

``share`` is the suspect's kW over the parent's unexplained kW: near 1, it alone explains it.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

import numpy as np

from models.balance_state import TOD
from models.fusion import score_of, severity_rank
from schemas.balance import BalanceRows
from schemas.batch import AnomalyRecord
from schemas.outputs import SEVERITIES, stable_id

if TYPE_CHECKING:
    from models.balance import BalanceCore

DETECTOR = "balance"
MODEL = "gridstream-balance@1"


def rows_of(core: BalanceCore, i: int, rows: np.ndarray, s: dict, sums: tuple) -> BalanceRows:
    """The ``energy_balance`` rows of the parents balanced at interval ``i``."""
    load, kids, n_kids, n_miss, est_kw = (a[rows] for a in sums)
    h = core.params.interval_s / 3600.0
    ids = np.array([core.parents.ids[r] for r in rows.tolist()], dtype=object)
    suspects = [
        json.dumps(suspects_of(core, int(r), i, float(g), int(sg))[:3]) if a else ""
        for r, a, g, sg in zip(rows, s["alarm"], s["recent_kw"], s["sign"], strict=True)
    ]
    return BalanceRows(
        parent_id=ids,
        interval_ms=i * core.interval_ms,
        parent_kwh=load * h,
        children_kwh=kids * h,
        estimated_kwh=est_kw * h,
        expected_loss_kwh=s["expected"] * h,
        residual_kwh=(s["gap"] - s["expected"]) * h,
        loss_ratio=s["gap"] / load,
        expected_ratio=s["expected"] / load,
        deviation=s["z"],
        log10p=s["logp"],
        children=n_kids.astype(np.int64),
        missing=n_miss.astype(np.int64),
        alarm=s["alarm"],
        suspects=suspects,
    )


def recent_departure(
    core: BalanceCore, kids: np.ndarray, since: int, i: int
) -> tuple[np.ndarray, np.ndarray]:
    """Mean registered kW minus the time-of-day profile over the open-interval ring from
    ``since`` to ``i``, per child in ``kids`` (the drop or rise that coincides with the onset),
    and how many intervals it averages; the six-hour EWMA (as 24) where the ring holds none."""
    c = core.children.cols
    iv = c["iv"][kids]
    use = (iv >= since) & (iv <= i)
    tod = (iv * core.interval_ms % 86_400_000 * TOD // 86_400_000).astype(np.int64)
    prof = np.take_along_axis(c["prof"][kids], np.clip(tod, 0, TOD - 1), axis=1)
    dep = np.where(use, c["kw"][kids] - prof, 0.0)
    n = use.sum(axis=1)
    fallback = c["fast_dev"][kids].astype(np.float64)
    mean = np.where(n > 0, np.nan_to_num(dep).sum(axis=1) / np.maximum(n, 1), fallback)
    return mean, np.where(n > 0, n, 24)


def suspects_of(core: BalanceCore, r: int, i: int, unexplained_kw: float, sign: int) -> list[dict]:
    """The children of parent row ``r`` that best explain ``unexplained_kw``, best first.

    A child re-mapped since the onset comes first. The others are ranked by the log-likelihood
    ratio of "its departure x is the gap g" against "its departure is noise", for a mean of n
    departures of scale s: ``g (x - g/2) n / s^2``. A quiet meter that dropped by the gap beats
    a noisy one that happened to dip by more."""
    c, n = core.children.cols, len(core.children)
    since = int(core.parents.cols["onset"][r])
    recent = c["moved_iv"][:n] >= since - 4
    here = c["parent"][:n] == r
    left = recent & (c["prev_parent"][:n] == r) & ~here
    joined = recent & here & (c["prev_parent"][:n] >= 0)
    level = np.nan_to_num(c["level"][:n].astype(np.float64))
    dev, count = np.zeros(n), np.ones(n)
    kids = np.flatnonzero(here)
    dev[kids], count[kids] = recent_departure(core, kids, since, i)
    if sign > 0:
        kw = np.where(left, level, np.where(here & ~joined, np.maximum(-dev, 0.0), 0.0))
        why = np.where(left, "mapped_away", "registration_dropped")
    else:
        kw = np.where(joined, level, np.where(here, np.maximum(dev, 0.0), 0.0))
        why = np.where(joined, "mapped_here", "registration_rose")
    gap = max(abs(unexplained_kw), 1e-9)
    noise = np.maximum(np.nan_to_num(c["dev_abs"][:n].astype(np.float64)), 0.05 * level + 1e-3)
    rank = gap * (kw - gap / 2) * count / noise**2
    rank = np.where(left | joined, np.inf, rank)
    cand = np.flatnonzero((here | left) & (kw > 0))
    top = cand[np.argsort(-rank[cand], kind="stable")][: core.params.suspects]
    return [
        {
            "meter": core.children.ids[j],
            "kw": round(float(kw[j]), 3),
            "share": round(float(kw[j]) / gap, 3),
            "why": str(why[j]),
        }
        for j in top.tolist()
    ]


def events_for(
    core: BalanceCore, i: int, rows: np.ndarray, s: dict, table: BalanceRows
) -> list[AnomalyRecord]:
    """One event per new incident among the parents balanced at interval ``i``."""
    c, p = core.parents.cols, core.params
    inc = c["incident"][rows]
    expired = (inc >= 0) & (i - inc > p.cooldown)
    c["incident"][rows[expired]] = -1
    alarm = s["alarm"]
    new = alarm & (c["incident"][rows] < 0)
    c["incident"][rows[alarm]] = i
    c["since"][rows[new]] = c["onset"][rows][new]
    score = score_of(s["logp"], core.tail_params) if len(rows) else np.empty(0)
    sev = severity_rank(score, core.tail_params)
    return [
        _event(core, i, int(j), rows, s, table, float(score[j]), int(sev[j]))
        for j in np.flatnonzero(new).tolist()
    ]


def _event(core, i, j, rows, s, table, score, sev) -> AnomalyRecord:  # noqa: ANN001
    r = int(rows[j])
    t_ms = i * core.interval_ms
    pid = core.parents.ids[r]
    since = int(core.parents.cols["since"][r]) * core.interval_ms
    ranked = suspects_of(core, r, i, float(s["recent_kw"][j]), int(s["sign"][j]))
    explanation: list[dict[str, float | str | None]] = [
        {
            "feature": "loss_ratio",
            "value": float(table.loss_ratio[j]),
            "expected": float(table.expected_ratio[j]),
            "deviation": float(s["z"][j]),
        }
    ]
    explanation += [
        {
            "feature": f"suspect:{x['meter']}",
            "value": x["kw"],
            "expected": None,
            "deviation": x["share"],
        }
        for x in ranked
    ]
    reading: dict[str, float | str | None] = {
        "loss_ratio": float(table.loss_ratio[j]),
        "expected_ratio": float(table.expected_ratio[j]),
        "parent_kwh": float(table.parent_kwh[j]),
        "children_kwh": float(table.children_kwh[j]),
        "since_ms": float(since),
        "direction": "missing" if s["sign"][j] > 0 else "excess",
        "suspects": json.dumps(ranked),
    }
    return AnomalyRecord(
        event_id=stable_id("transformer", pid, t_ms, DETECTOR),
        entity_id=pid,
        entity_kind="transformer",
        ts_ms=t_ms,
        score=score,
        severity=SEVERITIES[max(sev, 0)],
        detectors={DETECTOR: score},
        fired=[DETECTOR],
        explanation=explanation,
        reading=reading,
        model_versions={DETECTOR: MODEL},
        detected_ms=t_ms,
    )
