"""Physical bounds of every input channel, shared by the pydantic contract and the fast decoder.

A reading outside these bounds is not a grid anomaly but a broken meter or a unit mistake, so it is
dead-lettered with reason ``out_of_range`` instead of being scored. One table serves both
validators so they cannot disagree.
"""

from typing import Final

# field -> (low, high), inclusive. Negative active power is legal (export from solar, storage).
# A revenue meter may sit on a 500 MW smelter, a wind farm's export or a transmission
# interconnect, so active and reactive power are bounded at 10 GW either way: larger than any one
# metered point, small enough to catch a unit mistake of W for kW on a large customer.
METER_BOUNDS: Final[dict[str, tuple[float, float]]] = {
    "kw": (-10_000_000.0, 10_000_000.0),
    "kvar": (-10_000_000.0, 10_000_000.0),
    "voltage_v": (0.0, 1_000_000.0),
    "current_a": (0.0, 100_000.0),
}

SCADA_BOUNDS: Final[dict[str, tuple[float, float]]] = {
    "p_mw": (-10_000.0, 10_000.0),
    "q_mvar": (-10_000.0, 10_000.0),
    "voltage_kv": (0.0, 1_500.0),
    "current_a": (0.0, 1_000_000.0),
    "frequency_hz": (40.0, 70.0),
    "temperature_c": (-60.0, 250.0),
}

MAX_ID_LENGTH: Final = 128
MAX_QUALITY_LENGTH: Final = 32
# A payload larger than this is not a reading; it is dead-lettered unparsed.
MAX_MESSAGE_BYTES: Final = 64 * 1024

# Entity kinds a SCADA reading may name. Meters are always kind "meter".
SCADA_KINDS: Final = (
    "feeder",
    "transformer",
    "substation",
    "line",
    "generator",
    "storage",
    "solar",
    "wind",
    "other",
)
ENTITY_KINDS: Final = ("meter", *SCADA_KINDS)
