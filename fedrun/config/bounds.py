"""Value bounds that a target's signature declares for its config keys.

A model, partition or dataset argument annotated ``Annotated[int, Bound(1, what="...")]`` gets a range
check from :func:`fedrun.config.schema.validate`: the generated schema (fedrun/config/schema.py) keeps the plain
type for Hydra, and the bound turns a value of the right type that makes no sense
(``model.hidden=[-5]``, ``partition.sigma=1e6``) into one sentence before anything is built.
A list value is checked element by element.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Optional


@dataclass(frozen=True)
class Bound:
    low: Optional[float] = None  # inclusive unless low_open
    high: Optional[float] = None  # inclusive
    what: str = "a value in range"  # how the sentence names what is expected
    low_open: bool = False

    def admits(self, value: Any) -> bool:
        if isinstance(value, (list, tuple)):
            return all(self.admits(v) for v in value)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            return False
        if self.low is not None and (value <= self.low if self.low_open else value < self.low):
            return False
        return self.high is None or value <= self.high


AT_LEAST_1 = Bound(1, what="a whole number >= 1")
WIDTHS = Bound(1, what="a list of layer widths, each >= 1")
POSITIVE = Bound(0, low_open=True, what="a number > 0")
