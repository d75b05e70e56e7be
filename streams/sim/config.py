"""The simulator's parameters, checked once at construction so a bad run fails before it starts.

Kept apart from the generator so the CLI and the demo can build and validate a ``SimConfig``
without reading the signal model (``streams.sim.generator`` re-exports both names).
"""

from __future__ import annotations

from dataclasses import dataclass

from schemas.exceptions import GridstreamError


class SimulationConfigError(GridstreamError, ValueError):
    """A simulator parameter is out of its range."""


@dataclass(frozen=True, slots=True)
class SimConfig:
    """Every parameter of a simulation; with a start time it fully determines the output.

    Rates are probabilities per reading (``late``: emitted 1..``late_max_steps`` steps after its
    ``ts``); ``rfc3339_fraction`` is the share of entities whose producer sends RFC 3339 strings
    instead of epoch ms; each meter stands for ``customers_per_meter`` customers on its feeder,
    so feeder loads reach MW without simulating every house.

    >>> SimConfig(meters=0, assets=0)
    Traceback (most recent call last):
    ...
    streams.sim.config.SimulationConfigError: SimConfig.meters=0: meters + assets must be > 0
    """

    meters: int = 1000
    assets: int = 20
    meter_interval_s: int = 900
    scada_interval_s: int = 300
    seed: int = 0
    missing_rate: float = 0.002
    late_rate: float = 0.01
    late_max_steps: int = 4
    duplicate_rate: float = 0.001
    anomaly_rate_per_day: float = 0.5
    rfc3339_fraction: float = 0.2
    commercial_fraction: float = 0.15
    basic_meter_fraction: float = 0.3
    customers_per_meter: float = 20.0
    utc_offset_h: float = 0.0

    def __post_init__(self) -> None:
        def need(ok: bool, name: str, rule: str) -> None:
            if not ok:
                raise SimulationConfigError(f"SimConfig.{name}={getattr(self, name)!r}: {rule}")

        need(self.meters >= 0, "meters", "must be >= 0")
        need(self.assets >= 0, "assets", "must be >= 0")
        need(self.meters + self.assets > 0, "meters", "meters + assets must be > 0")
        for name in ("meter_interval_s", "scada_interval_s", "late_max_steps"):
            need(getattr(self, name) >= 1, name, "must be >= 1")
        for name in (
            "missing_rate",
            "late_rate",
            "duplicate_rate",
            "rfc3339_fraction",
            "commercial_fraction",
            "basic_meter_fraction",
        ):
            need(0.0 <= getattr(self, name) <= 1.0, name, "must be in [0, 1]")
        longest = max(self.meter_interval_s, self.scada_interval_s)
        need(
            0.0 <= self.anomaly_rate_per_day * longest <= 86_400,
            "anomaly_rate_per_day",
            "must be >= 0 and at most one per step",
        )
        need(self.customers_per_meter > 0, "customers_per_meter", "must be > 0")
        need(-14 <= self.utc_offset_h <= 14, "utc_offset_h", "must be in [-14, 14]")
