"""Hyperparameters of the streaming core, stored verbatim so a processor can be rebuilt."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

# The online detectors (models.scoring says what each sees), in the order events list them.
ONLINE_DETECTORS: tuple[str, ...] = (
    "residual",
    "seasonal",
    "stuck",
    "channel",
    "likelihood",
    "level",
    "novelty",
)
RELATIVE_MODES: tuple[str, ...] = ("none", "departure", "residual", "both")


@dataclass(frozen=True, slots=True)
class ProcessorParams:
    """Everything that shapes the core's output; changing any of it changes scores.

    Times are in seconds; rates are EWMA weights of the newest observation.
    """

    horizons_s: tuple[int, ...] = (900, 3600)
    window: int = 16  # recent readings kept per entity (ring buffer)
    profile_bucket_s: int = 900  # time-of-day resolution of the seasonal profile
    profile_rate: float = 0.1  # EWMA floor once a bucket has 1/rate observations
    deviation_rate: float = 0.5  # how fast the nowcast follows departures from the profile
    deviation_decay: float = 0.85  # per expected step, how much departure persists ahead
    scale_rate: float = 0.05  # EWMA of absolute residuals (the residual scale)
    tod_residual: bool = True  # the residual scale follows its time of day (0.5x to 4x)
    channel_rate: float = 0.05  # EWMA of secondary channels (voltage, current, ...)
    warmup: int = 12  # readings an entity needs before it is scored
    seasonal_min_days: int = 3  # observations of a time-of-day bucket before departures count
    forecast_min: int = 3  # readings an entity needs before it gets forecasts
    cusum_k: float = 2.0  # CUSUM slack, in seasonal scales: weather and weekdays stay below
    cusum_h: float = 10.0  # CUSUM sums restart above 3x this, so a new change can show
    # entities whose range stays >= 0 measure these in relative (log) terms (models.relative):
    # "departure" (from the time-of-day profile), "residual" (one step), "both" or "none"
    relative: str = "departure"
    relative_eps: float = 0.05  # share of the range's top added before the log, so 0 stays finite
    stuck_max_repeat_rate: float = 0.05  # entities repeating more often than this never stick
    lik_min: int = 150  # readings behind the long-run statistics before tail scores count
    lik_short_rate: float = 0.2  # EWMA weight of the recent mean error / value (about 9 readings)
    lik_long_rate: float = 0.0005  # EWMA weight of the long-run mean and variance of those means
    lik_floor: float = 0.05  # smallest sd of the recent mean error (in long-run error scales)
    lik_clip: float = 4.0  # long-run statistics learn values winsorised at this many sds
    lvl_short_rate: float = 0.2  # EWMA weight of the recent mean value for the level detector
    lvl_long_rate: float = 0.0005  # EWMA weight of its long-run mean and variance
    lvl_min: int = 300  # readings behind the level detector's long-run statistics before it scores
    nov_out_rate: float = 0.02  # how far a reading outside the range pulls the bound out
    nov_in_rate: float = 0.002  # how fast the range's bounds creep towards its middle
    # days of the week (0 = Monday) whose hours get their own expected shape, an offset from
    # the other days' profile (models.daytype); () for one profile every day
    weekend_days: tuple[int, ...] = (5, 6)
    weekend_min_shift: float = 3.0  # ... for hours whose offset is this many seasonal scales
    weekly_min_weeks: int = 2  # weeks of departures before the level detector adjusts by weekday
    weekly_rate: float = 0.3  # weight of the newest week in an hour-of-week bucket
    hst_trees: int = 15
    hst_height: int = 8
    hst_window: int = 250
    hst_learn_every: int = 16  # learn one in N readings: the model is global, not per entity
    gate_decades: float = 2.0  # readings some detector puts below 10^-this go to HST / batch model
    # -- calibrated tails (models.tails) and fusion (models.fusion) --------------------------
    tail_quantile: float = 0.97  # the tail of a statistic starts at this quantile of it
    tail_step: float = 0.05  # quantile-tracking step, in mean absolute deviations of the statistic
    tail_rate: float = 0.02  # EWMA weight of the newest excess in the tail's moments
    tail_share_rate: float = 0.002  # EWMA weight of "above u" in the tail's share
    tail_xi_max: float = 0.45  # heaviest tail shape allowed (0: exponential)
    tail_cap: float = 8.0  # one excess counts at most this many mean excesses
    tail_alarm_cap: float = 2.0  # ... and this many if it alone reaches the emit threshold
    tail_min: int = 100  # statistics learned before a tail scores
    tail_min_excess: int = 5  # excesses learned before a tail scores
    stuck_rate_floor: float = 0.02  # repeats are never taken as rarer than this
    score_decades: float = 8.0  # score = -log10(fused tail probability) / this, in [0, 1]
    # fused detectors: the online ones, and the batch anomaly model of a loaded set (if any)
    detectors: tuple[str, ...] = (*ONLINE_DETECTORS, "iforest")
    emit_threshold: float = 0.5  # fused score from which an anomaly event is published
    severity_thresholds: tuple[tuple[str, float], ...] = (
        ("critical", 0.9),
        ("warning", 0.7),
        ("info", 0.5),
    )
    drift_delta: float = 0.002  # ADWIN confidence of the fleet residual-drift detector
    drift_sample_every: int = 1  # feed it one warm reading in N (a hash sample) on large fleets
    cooldown_s: int = 3600  # an incident lasts while high scores come less than this apart
    # a reading outside an event is shown in full only when its score beats the entity's highest
    # within cooldown_s by this much; otherwise it is the echo of what was shown (negative: off)
    news_margin: float = 0.05
    incident_discount: float = (
        0.3  # a high score that is no news within an incident is shown x this
    )
    seed: int = 42
    extra: dict[str, float] = field(default_factory=dict)

    def describe(self) -> dict[str, object]:
        return asdict(self)

    def __post_init__(self) -> None:
        if not self.horizons_s or any(h <= 0 for h in self.horizons_s):
            raise ValueError(f"horizons_s must be positive seconds, got {self.horizons_s}")
        if self.window < 2:
            raise ValueError(f"window must be at least 2 readings, got {self.window}")
        if 86400 % self.profile_bucket_s:
            raise ValueError(f"profile_bucket_s must divide a day, got {self.profile_bucket_s}")
        for name in (
            "profile_rate",
            "deviation_rate",
            "scale_rate",
            "channel_rate",
            "lik_short_rate",
            "lik_long_rate",
            "lvl_short_rate",
            "lvl_long_rate",
            "weekly_rate",
            "nov_out_rate",
        ):
            rate = getattr(self, name)
            if not 0.0 < rate <= 1.0:
                raise ValueError(f"{name} must be in (0, 1], got {rate}")
        if any(d not in range(7) for d in self.weekend_days) or len(self.weekend_days) > 5:
            raise ValueError(
                f"weekend_days must be at most 5 days of the week, 0 (Monday) to 6, "
                f"got {self.weekend_days}"
            )
        if self.relative not in RELATIVE_MODES:
            raise ValueError(f"relative must be one of {RELATIVE_MODES}, got {self.relative!r}")
        if not 0.0 < self.incident_discount < 1.0:
            raise ValueError(f"incident_discount must be in (0, 1), got {self.incident_discount}")
        if not 0.0 <= self.emit_threshold <= 1.0:
            raise ValueError(f"emit_threshold must be in [0, 1], got {self.emit_threshold}")
