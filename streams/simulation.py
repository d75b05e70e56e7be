"""Pure telemetry generator: meter and SCADA readings with labelled injected anomalies.

No Kafka and no clock: simulated time is passed in, so the same config, seed and start give
byte-identical records however the caller slices time (``streams.simulator`` is the Kafka side).
Every step computes all entities of a group at once with numpy; only the JSON encoding is per
record. Four independent seeded streams (set-up, signal noise, anomalies, imperfections) mean that
turning anomalies or imperfections on or off leaves the underlying signal unchanged, so a run with
``anomaly_rate_per_day=0`` is the ground truth of the same run with anomalies.

>>> sim = TelemetrySimulator(SimConfig(meters=3, assets=3, seed=1), start_ms=1_700_000_100_000)
>>> batch = sim.step_until(1_700_000_100_000 + 3_600_000)
>>> sorted(set(batch.contract))
['meter', 'scada']
"""

from __future__ import annotations

import heapq
import math
from dataclasses import dataclass
from datetime import UTC, datetime
from itertools import compress

import numpy as np
import orjson
from numpy.random import PCG64, Generator, SeedSequence

from schemas.exceptions import GridstreamError
from schemas.outputs import LabelledAnomaly

ANOMALY_KINDS = ("spike", "drop_to_zero", "stuck", "drift", "voltage_sag", "step_change")
ASSET_KINDS = ("feeder", "transformer", "substation")
_DUR_LO = np.array([1, 1, 4, 8, 1, 8])  # duration in steps of each kind, inclusive bounds
_DUR_HI = np.array([1, 4, 16, 32, 4, 32])
_SPIKE, _DROP, _STUCK, _DRIFT, _SAG, _STEP = range(6)
_COOLDOWN_STEPS = 4  # clean steps between two anomalies of one entity, so labels stay distinct
_DAY_MS = 86_400_000
_NOMINAL_KV = np.array([11.0, 33.0, 132.0])  # feeder, transformer, substation
_SQRT3 = math.sqrt(3.0)


class SimulationConfigError(GridstreamError, ValueError):
    """A simulator parameter is out of its range."""


@dataclass(frozen=True, slots=True)
class SimConfig:
    """Every parameter of a simulation; with a start time it fully determines the output.

    Rates are probabilities per reading (``late``: emitted 1..``late_max_steps`` steps after its
    ``ts``); ``rfc3339_fraction`` is the share of entities whose producer sends RFC 3339 strings
    instead of epoch ms; each meter stands for ``customers_per_meter`` customers on its feeder,
    so feeder loads reach MW without simulating every house.
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


@dataclass(frozen=True, slots=True)
class SimBatch:
    """Records that became due in one ``step_until`` call, in emission order, plus labels.

    ``key`` is the entity id as UTF-8 (the Kafka key); ``emit_ms`` > ``ts_ms`` marks a late one.
    """

    contract: list[str]  # "meter" | "scada": which input topic
    entity: list[str]
    key: list[bytes]
    value: list[bytes]  # the JSON reading
    ts_ms: np.ndarray  # int64 reading time
    emit_ms: np.ndarray  # int64 simulated time the record was sent
    labels: list[LabelledAnomaly]  # anomalies that started in this call
    generated: int  # readings computed (before missing / duplicates)
    missing: int
    late: int  # readings held back to be sent later
    duplicates: int

    def __len__(self) -> int:
        return len(self.value)


def _bump(hour: np.ndarray, centre: float, width: float) -> np.ndarray:
    d = (hour - centre + 12.0) % 24.0 - 12.0
    return np.exp(-0.5 * (d / width) ** 2)


def _load_shape(hour: np.ndarray, weekend: bool, commercial: np.ndarray) -> np.ndarray:
    """Daily load (peak ~1): residential morning/evening peaks blended with a commercial day."""
    res = (
        0.25
        + 0.45 * _bump(hour, 9.0 if weekend else 7.5, 1.3)
        + 0.75 * _bump(hour, 19.0, 2.0)
        + (0.2 if weekend else 0.05) * _bump(hour, 13.0, 3.0)
    )
    plateau = 1.0 / (1.0 + np.exp(-2.0 * (hour - 7.5))) / (1.0 + np.exp(-2.0 * (18.5 - hour)))
    com = 0.2 + (0.25 if weekend else 0.8) * plateau
    return res + commercial * (com - res)


class _Anomalies:
    """Anomaly state of one group of entities; at most one anomaly per entity at a time."""

    def __init__(self, n: int, channels: int) -> None:
        self.kind = np.full(n, -1, dtype=np.int8)
        self.pos = np.zeros(n, dtype=np.int32)
        self.dur = np.zeros(n, dtype=np.int32)
        self.mag = np.zeros(n)
        self.cool = np.zeros(n, dtype=np.int32)
        self.frozen = np.zeros((n, channels))

    def advance(self, rng: Generator, p_start: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Move running anomalies one step on and start new ones on free entities."""
        u = rng.random(self.kind.shape[0])
        active = self.kind >= 0
        self.cool[~active & (self.cool > 0)] -= 1
        self.pos[active] += 1
        ended = active & (self.pos >= self.dur)
        self.kind[ended] = -1
        self.cool[ended] = _COOLDOWN_STEPS
        new = np.flatnonzero((self.kind < 0) & (self.cool == 0) & (u < p_start))
        kinds = rng.integers(0, len(ANOMALY_KINDS), new.shape[0])
        dur = rng.integers(_DUR_LO[kinds], _DUR_HI[kinds] + 1)
        up = rng.random(new.shape[0]) < 0.5
        m = rng.random(new.shape[0])
        mag = np.select(
            [kinds == _SPIKE, kinds == _DRIFT, kinds == _SAG, kinds == _STEP],
            [
                3.0 + 3.0 * m,
                np.where(up, 1.0, -1.0) * (0.3 + 0.5 * m),
                0.10 + 0.10 * m,
                np.where(up, 1.4 + 0.6 * m, 0.3 + 0.3 * m),
            ],
            0.0,
        )
        self.kind[new], self.pos[new], self.dur[new], self.mag[new] = kinds, 0, dur, mag
        return new, kinds, dur

    def factors(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(active entity indices, factor on P and Q, factor on voltage) for this step."""
        act = np.flatnonzero(self.kind >= 0)
        k, mag = self.kind[act], self.mag[act]
        ramp = 1.0 + mag * (self.pos[act] + 1) / self.dur[act]
        power = np.select(
            [k == _SPIKE, k == _DROP, k == _DRIFT, k == _STEP], [mag, 0.0, ramp, mag], 1.0
        )
        return act, power, np.where(k == _SAG, 1.0 - mag, 1.0)

    def freeze(self, cols: np.ndarray) -> None:
        """Stuck entities repeat, exactly, the rounded reading of their first anomalous step."""
        stuck = self.kind == _STUCK
        first = np.flatnonzero(stuck & (self.pos == 0))
        self.frozen[first] = cols[first]
        later = np.flatnonzero(stuck & (self.pos > 0))
        cols[later] = self.frozen[later]


class _Group:
    """Static description and running state of the meters, or of the SCADA assets."""

    def __init__(self, contract: str, ids: list[str], kinds: list[str], interval_s: int) -> None:
        self.contract, self.ids, self.kinds = contract, ids, kinds
        self.keys = [i.encode() for i in ids]
        self.interval_ms = interval_s * 1000
        self.anomalies = _Anomalies(len(ids), 4 if contract == "meter" else 6)
        self.next_ms = 0
        self.rfc = np.zeros(len(ids), dtype=bool)
        self.optional = np.zeros(len(ids), dtype=bool)  # leaves out some optional fields


# One step's records of one group, or a subset of them: contract, entities, keys, values, ts.
_Chunk = tuple[str, list[str], list[bytes], list[bytes], int]


def _pick(chunk: _Chunk, mask: np.ndarray) -> _Chunk:
    m = mask.tolist()
    contract, entities, keys, values, ts = chunk
    return (
        contract,
        list(compress(entities, m)),
        list(compress(keys, m)),
        list(compress(values, m)),
        ts,
    )


def _utc(ms: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000.0, tz=UTC)


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
        self._theta: np.ndarray | None = None  # transformer oil temperature, °C
        self._freq_dev = 0.0
        kinds = [ASSET_KINDS[k] for k in self._akind]
        self._meters = _Group("meter", meter_ids, ["meter"] * c.meters, c.meter_interval_s)
        self._assets = _Group("scada", fd_ids + tx_ids + sub_ids, kinds, c.scada_interval_s)
        self._meters.optional = rng.random(c.meters) < c.basic_meter_fraction
        self._assets.optional = self._akind == 0  # feeders: no temperature
        for g in (self._meters, self._assets):
            g.rfc = rng.random(len(g.ids)) < c.rfc3339_fraction
            g.next_ms = -(-self.start_ms // g.interval_ms) * g.interval_ms
        self.entity_kinds = dict(
            zip(meter_ids + self._assets.ids, self._meters.kinds + kinds, strict=True)
        )
        self._pending: list[tuple[int, int, _Chunk]] = []  # heap of late chunks by emit time
        self._seq = 0

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
        shape = _load_shape((local % 24.0 + self._jitter) % 24.0, weekend, self._mix)
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
        out: tuple[list, ...] = ([], [], [], [], [], [])
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
        g: _Group,
        t: int,
        cols: np.ndarray,
        out: tuple[list, ...],
        labels: list[LabelledAnomaly],
        counts: list[int],
    ) -> None:
        """Apply anomalies, derive current, round, add imperfections, encode and queue."""
        n, meter, c = len(g.ids), g.contract == "meter", self.config
        new, kinds, dur = g.anomalies.advance(
            self._anomaly_rng, c.anomaly_rate_per_day * g.interval_ms / _DAY_MS
        )
        for i, k, d in zip(new.tolist(), kinds.tolist(), dur.tolist(), strict=True):
            end = _utc(t + (d - 1) * g.interval_ms)  # ts of the last anomalous reading
            labels.append(
                LabelledAnomaly(
                    entity_id=g.ids[i],
                    entity_kind=g.kinds[i],
                    kind=ANOMALY_KINDS[k],
                    start_ts=_utc(t),
                    end_ts=end,
                )
            )
        act, power, volt = g.anomalies.factors()
        cols[act, 0:2] *= power[:, None]
        cols[act, 2] *= volt
        cols[:, 3] = (
            np.hypot(cols[:, 0], cols[:, 1]) * 1000.0 / (cols[:, 2] * (1 if meter else _SQRT3))
        )
        for j, d in enumerate((3, 3, 1, 2) if meter else (4, 4, 3, 1, 3, 1)):
            cols[:, j] = np.round(cols[:, j], d)
        g.anomalies.freeze(cols)
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
            self._encode(g, t, keep, cols[keep]),
            t,
        )
        counts[0] += n
        counts[1] += n - keep.shape[0]
        counts[2] += int(late.sum())
        counts[3] += int(dup.sum())
        self._append(out, _pick(chunk, ~late) if late.any() else chunk, t)
        for steps in np.unique(late_steps[late]).tolist():
            later = (
                t + steps * g.interval_ms,
                self._seq,
                _pick(chunk, late & (late_steps == steps)),
            )
            heapq.heappush(self._pending, later)
            self._seq += 1
        if dup.any():  # a producer's retry: the same bytes again, in the same step
            self._append(out, _pick(chunk, dup), t)

    def _encode(self, g: _Group, t: int, idx: np.ndarray, cols: np.ndarray) -> list[bytes]:
        """One JSON object per reading, without the optional fields its producer lacks.

        One ``orjson.dumps`` of the whole step, split at the record boundaries, is ~5x cheaper
        than a call per record (each call's 1 KiB buffer churns the C heap); the split is exact
        because no string we write contains a brace.
        """
        ts_str = _utc(t).strftime("%Y-%m-%dT%H:%M:%SZ")
        ids, kinds = g.ids, g.kinds
        tss = [ts_str if r else t for r in g.rfc[idx].tolist()]
        rows = zip(idx.tolist(), tss, *cols.T.tolist(), strict=True)
        if g.contract == "meter":
            objs = [
                {
                    "meter_id": ids[i],
                    "ts": ts,
                    "kw": kw,
                    "kvar": kvar,
                    "voltage_v": v,
                    "current_a": a,
                    "quality": "good",
                }
                for i, ts, kw, kvar, v, a in rows
            ]
            drop: tuple[str, ...] = ("kvar", "current_a")  # basic meters: kW and voltage only
        else:
            objs = [
                {
                    "asset_id": ids[i],
                    "asset_kind": kinds[i],
                    "ts": ts,
                    "p_mw": p,
                    "q_mvar": q,
                    "voltage_kv": v,
                    "current_a": a,
                    "frequency_hz": f,
                    "temperature_c": temp,
                    "quality": "good",
                }
                for i, ts, p, q, v, a, f, temp in rows
            ]
            drop = ("temperature_c",)
        for j in np.flatnonzero(g.optional[idx]).tolist():
            for name in drop:
                del objs[j][name]
        if not objs:
            return []
        values = [b"{%b}" % part for part in orjson.dumps(objs)[2:-2].split(b"},{")]
        if len(values) != len(objs):  # cannot happen with our ids; refuse rather than mis-split
            raise GridstreamError(
                f"simulator: {g.contract} step at {t} ms split into "
                f"{len(values)} records, expected {len(objs)}"
            )
        return values

    @staticmethod
    def _append(out: tuple[list, ...], chunk: _Chunk, emit: int) -> None:
        contract, entities, keys, values, ts = chunk
        k = len(values)
        for column, items in zip(
            out, ([contract] * k, entities, keys, values, [ts] * k, [emit] * k), strict=True
        ):
            column.extend(items)

    def _release(self, until_ms: int, out: tuple[list, ...]) -> None:
        """Send the late chunks whose time has come, oldest first."""
        while self._pending and self._pending[0][0] <= until_ms:
            emit, _, chunk = heapq.heappop(self._pending)
            self._append(out, chunk, emit)
