"""Fusion of calibrated detectors into one score, severities, and incidents.

Every detector gives the ``log10`` probability of what it saw under the entity's own recent
behaviour (``models.tails``). The fused probability is the smallest of them times the number of
detectors (Bonferroni: a bound on the chance that *any* of them is this extreme by chance), so the
fused score keeps the meaning of each part:

    score = -log10(fused probability) / score_decades          (up to 0.9, critical)
    score = 0.9 + 0.1 * (1 - 10 ** -(excess decades / (2 * score_decades)))   (beyond)

With ``score_decades = 8`` a score of 0.5 (info) is a one-in-10,000 reading of normal behaviour,
0.7 (warning) one in 400,000, 0.9 (critical) one in 16 million. Beyond critical the scale does
not saturate: its last tenth covers everything rarer, so a one-in-10^20 reading still ranks above
a one-in-10^10 one and no mass of ties sits at 1.0 (1.0 itself is never reached). At one reading
every 15 minutes that is at most one false info alarm per entity in about 100 days of normal
behaviour, if the tails are right; ``benchmarks/quality_*`` measure how right they are.

Between incidents, a reading is shown in full only when its score beats the entity's highest of
the last ``cooldown_s`` by ``news_margin`` (0.05, 0.4 decades): a run of similar sub-threshold
scores (a burst ringing in CUSUM sums and averages) shows as one moment, the rest at
``incident_discount`` of their score. Events do not depend on it.

Incidents: a reading whose score reaches the emit threshold opens an incident, which lasts while
such readings come less than ``cooldown_s`` apart. Within it, only a reading of a higher severity
than any before is news: it is published and keeps its score. Every other reading of an open
incident, above the threshold or below it (the echo of the change in averages and sums), is
shown at its score times ``incident_discount`` (below the emit threshold, the ranking kept), so
the score stream and the event stream say the same thing: one incident, one high-scoring moment
per severity step.

>>> import numpy as np
>>> from models.params import ProcessorParams
>>> p = ProcessorParams()
>>> [round(float(x), 2) for x in score_of(np.array([0.0, -4.3, -5.3, -20.0]), p)]
[0.0, 0.54, 0.66, 0.98]
"""

from __future__ import annotations

import numpy as np

from models.params import ProcessorParams
from models.state import NO_TS
from schemas.outputs import SEVERITIES


def fuse(logp: dict[str, np.ndarray], params: ProcessorParams) -> np.ndarray:
    """Bonferroni-corrected ``log10`` probability of the most extreme fused detector (<= 0)."""
    parts = [logp[name] for name in params.detectors if name in logp]
    if not parts:
        raise ValueError("no detector scores to fuse")
    return np.minimum(np.minimum.reduce(parts) + np.log10(len(parts)), 0.0)


_SOFT_FROM = 0.9  # the critical threshold: up to it, the score is linear in decades


def score_of(log10p: np.ndarray, params: ProcessorParams) -> np.ndarray:
    """``-log10 p / score_decades`` in [0, 0.9], compressed into [0.9, 1) beyond."""
    linear = np.maximum(-log10p / params.score_decades, 0.0) + 0.0  # no -0.0
    over = np.maximum(linear - _SOFT_FROM, 0.0)
    soft = _SOFT_FROM + (1.0 - _SOFT_FROM) * -np.expm1(-0.5 * over * np.log(10.0))
    return np.where(linear > _SOFT_FROM, soft, linear)


def severity_rank(score: np.ndarray, params: ProcessorParams) -> np.ndarray:
    """-1 below the lowest threshold, else the index in (info, warning, critical)."""
    thresholds = dict(params.severity_thresholds)
    rank = np.full(score.shape, -1, dtype=np.int64)
    for i, name in enumerate(SEVERITIES):
        rank = np.where(score >= thresholds[name], i, rank)
    return rank


def incidents(
    c: dict[str, np.ndarray],
    s: np.ndarray,
    ts: np.ndarray,
    score: np.ndarray,
    warm: np.ndarray,
    params: ProcessorParams,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(shown score, severity rank, publish)`` of a round; updates the incident columns.

    A reading is published when it reaches the emit threshold with a severity and either no
    incident is open or its severity is higher than the incident's so far.
    """
    p = params
    rank = np.where(warm, severity_rank(score, p), -1)
    over = warm & (score >= p.emit_threshold) & (rank >= 0)
    last_ts, last_rank = c["last_event_ts"][s], c["last_event_rank"][s]
    ongoing = _within_cooldown(last_ts, ts, p)
    news = over & ~(ongoing & (rank <= last_rank))
    # no news: at the threshold, anything while an incident is open, or no new high lately
    echo = ~news & (over | ongoing | (warm & ~_new_high(c, s, ts, score, warm, p)))
    shown = np.where(echo, score * p.incident_discount, score)
    shown_rank = np.where(echo, severity_rank(shown, p), rank)
    c["last_event_ts"][s[over]] = ts[over]
    c["last_event_rank"][s[over]] = np.where(
        ongoing[over], np.maximum(rank[over], last_rank[over]), rank[over]
    )
    return shown, np.where(warm, shown_rank, -1), news


def _new_high(
    c: dict[str, np.ndarray],
    s: np.ndarray,
    ts: np.ndarray,
    score: np.ndarray,
    warm: np.ndarray,
    params: ProcessorParams,
) -> np.ndarray:
    """Whether each score beats the entity's highest of the last ``cooldown_s`` by
    ``news_margin`` (always, with a negative margin); updates that running high."""
    p = params
    peak, peak_ts = c["peak_score"][s], c["peak_ts"][s]
    recent = _within_cooldown(peak_ts, ts, p)
    prev = np.where(recent, peak, 0.0)
    up = warm & (~recent | (score > prev))
    c["peak_score"][s[up]] = score[up]
    c["peak_ts"][s[up]] = ts[up]
    return (p.news_margin < 0) | (score > prev + p.news_margin) | (score <= 0.0)


def _within_cooldown(last_ts: np.ndarray, ts: np.ndarray, params: ProcessorParams) -> np.ndarray:
    """Whether ``last_ts`` (``NO_TS``: never) lies less than ``cooldown_s`` before ``ts``."""
    since = ts - np.where(last_ts == NO_TS, ts, last_ts)  # NO_TS would overflow the difference
    return (last_ts != NO_TS) & (since < params.cooldown_s * 1000)
