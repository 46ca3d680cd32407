"""What an item is run under, its condition: a steering suffix appended to the prompt (``baseline``,
``pro_ic``, ``anti_ic``, or a user's), or activation steering at a strength (``act_p4``). The names
are item id parts; the gap is the difference between a pair of conditions.

Suffixes themselves are files (suffixes.py); the steering mechanism lives in backends/steering.py.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

BASELINE = "baseline"
PRO_SUFFIX = "pro_ic"
ANTI_SUFFIX = "anti_ic"
DEFAULT_SUFFIXES = (BASELINE, PRO_SUFFIX, ANTI_SUFFIX)  # the paper's three conditions
GAP_NAME = f"{PRO_SUFFIX}-{ANTI_SUFFIX}"  # the steerability gap: Conv% under pro_ic minus under anti_ic

ACTIVATION_PREFIX = "act_"
_ACTIVATION = re.compile(r"act_(?P<sign>[pm])(?P<whole>\d+)(?:_(?P<fraction>\d+))?\Z")


def activation_name(strength: float) -> str:
    """``4`` -> ``act_p4``, ``-0.5`` -> ``act_m0_5``: an item id part (no ``-``, no ``.``)."""
    sign = "m" if strength < 0 else "p"
    text = f"{abs(strength):g}".replace(".", "_")
    return f"{ACTIVATION_PREFIX}{sign}{text}"


def activation_strength(name: str) -> float | None:
    """The strength of an activation condition's name; None for a suffix."""
    match = _ACTIVATION.match(name)
    if match is None:
        return None
    value = float(f"{match['whole']}.{match['fraction'] or 0}")
    return -value if match["sign"] == "m" else value


def activation_pair(strengths: Sequence[float]) -> tuple[str, str] | None:
    """The activation gap's two conditions: the strongest positive and the strongest negative push."""
    positive, negative = [s for s in strengths if s > 0], [s for s in strengths if s < 0]
    if not positive or not negative:
        return None
    return activation_name(max(positive)), activation_name(min(negative))


def has_gap(conditions: Sequence[str]) -> bool:
    """Whether the suffix gap can be measured: both of its conditions ran."""
    return PRO_SUFFIX in conditions and ANTI_SUFFIX in conditions
