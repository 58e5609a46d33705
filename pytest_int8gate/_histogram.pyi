# The calibration histogram's optional C kernel (_histogram.c); calibrate.py holds the numpy path it matches.
from typing import Any

LANES: int

def add_counts(values: Any, counts: Any, lanes: Any, factor: float, reach: int, /) -> None: ...
