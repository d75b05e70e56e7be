"""Pure telemetry generator: meter and SCADA readings with labelled injected anomalies.

No Kafka and no clock: simulated time is passed in, so the same config, seed and start give
byte-identical records however the caller slices time (``streams.sim.producer`` is the Kafka side).
Every step computes all entities of a group at once with numpy; only the JSON encoding is per
record. Four independent seeded streams (set-up, signal noise, anomalies, imperfections) mean that
turning anomalies or imperfections on or off leaves the underlying signal unchanged, so a run with
``anomaly_rate_per_day=0`` is the ground truth of the same run with anomalies.

This module keeps the grid model and the stepping; the parameters live in ``sim_config``, the
load shape and anomalies in ``sim_signal``, the JSON encoding and record routing in
``sim_records``. Import the public names from here.

>>> sim = TelemetrySimulator(SimConfig(meters=3, assets=3, seed=1), start_ms=1_700_000_100_000)
>>> batch = sim.step_until(1_700_000_100_000 + 3_600_000)
>>> sorted(set(batch.contract))
['meter', 'scada']
"""

from __future__ import annotations

import heapq
import math

import numpy as np
from numpy.random import PCG64, Generator, SeedSequence

from schemas.outputs import LabelledAnomaly
from streams.sim.config import SimConfig, SimulationConfigError
from streams.sim.records import Chunk, Columns, Group, SimBatch, append, encode, pick, utc
from streams.sim.signal import ANOMALY_KINDS, load_shape

__all__ = [
    "ANOMALY_KINDS",
    "ASSET_KINDS",
    "SimBatch",
    "SimConfig",
    "SimulationConfigError",
    "TelemetrySimulator",
]

ASSET_KINDS = ("feeder", "transformer", "substation")
_DAY_MS = 86_400_000
_NOMINAL_KV = np.array([11.0, 33.0, 132.0])  # feeder, transformer, substation
_SQRT3 = math.sqrt(3.0)


class TelemetrySimulator:
    """Seeded generator of meter and SCADA readings from ``start_ms`` on (epoch ms, UTC).

    Readings sit on interval boundaries (``ts`` a multiple of the interval). Call
    ``step_until(t)`` with non-decreasing ``t``. The object is picklable, and a copy continues
    exactly as the original would. ``entity_kinds`` maps every entity id to its kind and
    ``topology`` every meter, feeder and transformer to the asset that aggregates it.
    """

    def __init__(self, config: SimConfig, start_ms: int) -> None:
        self.config = c = config
        self.start_ms = int(start_ms)
        setup, noise, anomaly, imperfect = SeedSequence(c.seed).spawn(4)
        rng = Generator(PCG64(setup))
        self._noise = Generator(PCG64(noise))
        self._anomaly_rng = Generator(PCG64(anomaly))
        self._imperfect = Generator(PCG64(imperfect))
        # the draws from ``rng`` happen in this order, which every seed's telemetry depends on
        ids, meter_region, fd_region = self._topology(c)
        self._draw_loads(rng, c, meter_region, fd_region)
        self._theta: np.ndarray | None = None  # transformer oil temperature, °C
        self._freq_dev = 0.0
        self._groups(rng, c, ids)
        self._pending: list[tuple[int, int, Chunk]] = []  # heap of late chunks by emit time
        self._seq = 0

    def _topology(self, c: SimConfig) -> tuple[tuple[list[str], ...], np.ndarray, np.ndarray]:
        """Ids and the hierarchy (no random draws); the region of every meter and feeder."""
        a = c.assets
        n_sub = max(1, a // 10) if a >= 3 else 0
        n_tx = max(1, a // 5) if a >= 2 else 0
        n_fd = a - n_sub - n_tx
        self._n = (n_fd, n_tx, n_sub)
        self._akind = np.repeat([0, 1, 2], self._n)
        fd_ids = [f"feeder-{i:04d}" for i in range(n_fd)]
        tx_ids = [f"tx-{i:04d}" for i in range(n_tx)]
        sub_ids = [f"sub-{i:03d}" for i in range(n_sub)]
        meter_ids = [f"meter-{i:06d}" for i in range(c.meters)]
        # hierarchy, round robin: meter -> feeder -> transformer -> substation (= weather region)
        self._meter_fd = np.arange(c.meters) % max(n_fd, 1)
        self._fd_tx = np.arange(n_fd) % max(n_tx, 1)
        self._tx_sub = np.arange(n_tx) % max(n_sub, 1)
        links = (
            (meter_ids, self._meter_fd, fd_ids),
            (fd_ids, self._fd_tx, tx_ids),
            (tx_ids, self._tx_sub, sub_ids),
        )
        self.topology = {
            child: up[i]
            for kids, idx, up in links
            if up
            for child, i in zip(kids, idx.tolist(), strict=True)
        }
        fd_region = self._tx_sub[self._fd_tx] if n_sub else np.zeros(n_fd, dtype=int)
        meter_region = fd_region[self._meter_fd] if n_fd else np.zeros(c.meters, dtype=int)
        self._asset_region = np.concatenate([fd_region, self._tx_sub, np.arange(n_sub)])
        return (meter_ids, fd_ids, tx_ids, sub_ids), meter_region, fd_region

    def _draw_loads(
        self, rng: Generator, c: SimConfig, meter_region: np.ndarray, fd_region: np.ndarray
    ) -> None:
        """Weather, load shapes and scales, power factors and ratings, drawn from ``rng``."""
        a = c.assets
        n_fd, _, n_sub = self._n
        self._region_offset = rng.normal(0.0, 1.5, max(n_sub, 1))
        self._weather = rng.uniform([[1.5], [1.0], [0.0]], [[12.0], [3.0], [2 * math.pi]], (3, 4))
        # load entities: every meter, then the unmetered load of each feeder
        n_load = c.meters + n_fd
        com = rng.random(n_load) < c.commercial_fraction
        com[c.meters :] = False
        self._mix = np.where(com, rng.uniform(0.75, 1.0, n_load), rng.uniform(0.0, 0.25, n_load))
        self._mix[c.meters :] = rng.uniform(0.2, 0.5, n_fd)
        self._jitter = rng.normal(0.0, 0.5, n_load)  # hours: people do not all cook at 19:00
        log_peak = np.where(
            com,
            rng.uniform(np.log(15), np.log(200), n_load),
            rng.uniform(np.log(1.5), np.log(5.0), n_load),
        )
        self._scale = np.exp(log_peak)  # kW at the daily peak
        self._scale[c.meters :] = rng.uniform(200.0, 1000.0, n_fd)
        self._heat = rng.uniform(0.1, 0.4, n_load)
        self._cool = rng.uniform(0.05, 0.3, n_load)
        self._load_region = np.concatenate([meter_region, fd_region])
        self._sigma = np.where(com, 0.05, 0.15)[: c.meters]
        self._meter_pf = rng.uniform(0.9, 0.99, c.meters)
        self._meter_voff = rng.uniform(-0.02, 0.03, c.meters)
        self._rating = 1.2 * self._aggregate_mw(self._scale)  # from downstream peaks
        self._asset_pf = rng.uniform(0.92, 0.98, a)
        self._asset_voff = rng.uniform(-0.01, 0.03, a)

    def _groups(self, rng: Generator, c: SimConfig, ids: tuple[list[str], ...]) -> None:
        """The two reading groups (meters, SCADA assets) and their per-entity options."""
        meter_ids, fd_ids, tx_ids, sub_ids = ids
        kinds = [ASSET_KINDS[k] for k in self._akind]
        self._meters = Group("meter", meter_ids, ["meter"] * c.meters, c.meter_interval_s)
        self._assets = Group("scada", fd_ids + tx_ids + sub_ids, kinds, c.scada_interval_s)
        self._meters.optional = rng.random(c.meters) < c.basic_meter_fraction
        self._assets.optional = self._akind == 0  # feeders: no temperature
        for g in (self._meters, self._assets):
            g.rfc = rng.random(len(g.ids)) < c.rfc3339_fraction
            g.next_ms = -(-self.start_ms // g.interval_ms) * g.interval_ms
        self.entity_kinds = dict(
            zip(meter_ids + self._assets.ids, self._meters.kinds + kinds, strict=True)
        )

    @property
    def next_due_ms(self) -> int:
        """Simulated time at which the next record becomes due (a step or a late release)."""
        due = [g.next_ms for g in (self._meters, self._assets) if g.ids]
        return min(due + [self._pending[0][0]] if self._pending else due)

    @property
    def held_back(self) -> int:
        """Late readings generated but not yet due (they come out of a later ``step_until``)."""
        return sum(len(chunk[3]) for _, _, chunk in self._pending)

    def temperature_c(self, t_ms: int) -> np.ndarray:
        """Ambient temperature of each region: season, day, slow weather, regional offset."""
        days = t_ms / _DAY_MS
        hour = (days * 24.0 + self.config.utc_offset_h) % 24.0
        period, amp, phase = self._weather
        slow = float(np.sum(amp * np.sin(2 * math.pi * days / period + phase)))
        season = 8.0 * math.cos(2 * math.pi * ((days % 365.25) - 200.0) / 365.25)
        diurnal = 4.0 * math.cos(2 * math.pi * (hour - 15.0) / 24.0)
        return 11.0 + season + diurnal + slow + self._region_offset

    def _clean_load_kw(self, t_ms: int) -> np.ndarray:
        """Noise-free load of every load entity (meters, then feeders' unmetered part), kW."""
        local = t_ms / 3_600_000 + self.config.utc_offset_h
        weekend = int(local // 24 + 3) % 7 >= 5  # 1970-01-01 was a Thursday
        shape = load_shape((local % 24.0 + self._jitter) % 24.0, weekend, self._mix)
        temp = self.temperature_c(t_ms)[self._load_region]
        heating = self._heat * np.maximum(0.0, 16.0 - temp) / 10.0
        cooling = self._cool * np.maximum(0.0, temp - 22.0) / 8.0
        return self._scale * shape * (1.0 + heating + cooling)

    def _aggregate_mw(self, load_kw: np.ndarray) -> np.ndarray:
        """Asset loads from load-entity loads: feeders sum their meters (each standing for
        ``customers_per_meter`` customers) plus unmetered load; upstream assets add ~1-2% loss."""
        (n_fd, n_tx, n_sub), m = self._n, self.config.meters
        weights = load_kw[:m] * self.config.customers_per_meter
        fd = (np.bincount(self._meter_fd, weights, minlength=n_fd)[:n_fd] + load_kw[m:]) / 1e3
        tx = np.bincount(self._fd_tx, fd, minlength=n_tx)[:n_tx] * 1.02
        sub = np.bincount(self._tx_sub, tx, minlength=n_sub)[:n_sub] * 1.01
        return np.concatenate([fd, tx, sub])

    def step_until(self, until_ms: int) -> SimBatch:
        """Generate every step with ``ts <= until_ms`` and return the records due by then."""
        out: Columns = ([], [], [], [], [], [])
        labels: list[LabelledAnomaly] = []
        counts = [0, 0, 0, 0]  # generated, missing, late, duplicates
        m, s = self._meters, self._assets
        while True:
            group = min((g for g in (m, s) if g.ids), key=lambda g: (g.next_ms, g is s))
            t = group.next_ms
            if t > until_ms:
                break
            self._release(t, out)
            cols = self._meter_columns(t) if group is m else self._asset_columns(t)
            self._emit(group, t, cols, out, labels, counts)
            group.next_ms += group.interval_ms
        self._release(until_ms, out)
        ts, emit = (np.asarray(x, dtype=np.int64) for x in out[4:])
        return SimBatch(*out[:4], ts, emit, labels, *counts)

    def _meter_columns(self, t: int) -> np.ndarray:
        """(n, 4) meter channels: kw, kvar, voltage_v, and current_a (derived later)."""
        n = self.config.meters
        clean = self._clean_load_kw(t)[:n]
        rnd = self._noise.standard_normal((2, n))
        kw = clean * np.exp(self._sigma * rnd[0])
        kvar = kw * np.tan(np.arccos(self._meter_pf))
        drop = 0.04 * clean / self._scale[:n]  # the service cable's drop at peak load
        volt = 230.0 * (1.0 + self._meter_voff - drop + 0.003 * rnd[1])
        return np.column_stack([kw, kvar, volt, np.zeros(n)])

    def _asset_columns(self, t: int) -> np.ndarray:
        """(n, 6) SCADA channels: p_mw, q_mvar, voltage_kv, current_a, frequency_hz, temp_c."""
        n = self.config.assets
        clean = self._aggregate_mw(self._clean_load_kw(t))
        util = clean / self._rating
        rnd = self._noise.standard_normal((4, n))
        p = clean * (1.0 + 0.015 * rnd[0])
        q = p * np.tan(np.arccos(self._asset_pf))
        volt = _NOMINAL_KV[self._akind] * (1.0 + self._asset_voff - 0.03 * util + 0.002 * rnd[1])
        self._freq_dev = 0.8 * self._freq_dev + 0.02 * float(self._noise.standard_normal())
        freq = 50.0 + self._freq_dev + 0.001 * rnd[2]  # one system frequency, tiny sensor noise
        target = self.temperature_c(t)[self._asset_region] + 5.0 + 55.0 * util**2
        if self._theta is None:
            self._theta = target
        else:  # oil temperature follows load through a first-order lag of about two hours
            lag = 1.0 - math.exp(-self.config.scada_interval_s / 7200.0)
            self._theta = self._theta + (target - self._theta) * lag
        return np.column_stack([p, q, volt, np.zeros(n), freq, self._theta + 0.2 * rnd[3]])

    def _emit(
        self,
        g: Group,
        t: int,
        cols: np.ndarray,
        out: Columns,
        labels: list[LabelledAnomaly],
        counts: list[int],
    ) -> None:
        """Apply anomalies, derive current, round, add imperfections, encode and queue."""
        meter = g.contract == "meter"
        self._start_anomalies(g, t, labels)
        act, power, volt = g.anomalies.factors()
        cols[act, 0:2] *= power[:, None]
        cols[act, 2] *= volt
        cols[:, 3] = (
            np.hypot(cols[:, 0], cols[:, 1]) * 1000.0 / (cols[:, 2] * (1 if meter else _SQRT3))
        )
        for j, d in enumerate((3, 3, 1, 2) if meter else (4, 4, 3, 1, 3, 1)):
            cols[:, j] = np.round(cols[:, j], d)
        g.anomalies.freeze(cols)
        self._queue(g, t, cols, out, counts)

    def _start_anomalies(self, g: Group, t: int, labels: list[LabelledAnomaly]) -> None:
        """Draw the anomalies that start at ``t`` and label each one."""
        c = self.config
        new, kinds, dur = g.anomalies.advance(
            self._anomaly_rng, c.anomaly_rate_per_day * g.interval_ms / _DAY_MS
        )
        for i, k, d in zip(new.tolist(), kinds.tolist(), dur.tolist(), strict=True):
            end = utc(t + (d - 1) * g.interval_ms)  # ts of the last anomalous reading
            labels.append(
                LabelledAnomaly(
                    entity_id=g.ids[i],
                    entity_kind=g.kinds[i],
                    kind=ANOMALY_KINDS[k],
                    start_ts=utc(t),
                    end_ts=end,
                )
            )

    def _queue(self, g: Group, t: int, cols: np.ndarray, out: Columns, counts: list[int]) -> None:
        """Imperfections (missing, late, duplicated readings), then encode and queue the rest."""
        n, c = len(g.ids), self.config
        u = self._imperfect.random((3, n))
        late_steps = self._imperfect.integers(1, c.late_max_steps + 1, n)
        keep = np.flatnonzero(u[0] >= c.missing_rate)
        late, late_steps = u[1][keep] < c.late_rate, late_steps[keep]
        dup = (u[2][keep] < c.duplicate_rate) & ~late
        sel = keep.tolist()
        chunk = (
            g.contract,
            [g.ids[i] for i in sel],
            [g.keys[i] for i in sel],
            encode(g, t, keep, cols[keep]),
            t,
        )
        counts[0] += n
        counts[1] += n - keep.shape[0]
        counts[2] += int(late.sum())
        counts[3] += int(dup.sum())
        append(out, pick(chunk, ~late) if late.any() else chunk, t)
        for steps in np.unique(late_steps[late]).tolist():
            later = (
                t + steps * g.interval_ms,
                self._seq,
                pick(chunk, late & (late_steps == steps)),
            )
            heapq.heappush(self._pending, later)
            self._seq += 1
        if dup.any():  # a producer's retry: the same bytes again, in the same step
            append(out, pick(chunk, dup), t)

    def _release(self, until_ms: int, out: Columns) -> None:
        """Send the late chunks whose time has come, oldest first."""
        while self._pending and self._pending[0][0] <= until_ms:
            emit, _, chunk = heapq.heappop(self._pending)
            append(out, chunk, emit)
