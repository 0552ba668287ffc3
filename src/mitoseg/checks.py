"""The valid range of every numeric setting, in one place.

The command line's argument types (`arg`) and the Python API's checks (`check`, called by `Config`,
`PostProcessing`, the block engine, prediction, labelling and evaluation) both read `RULES`, so an option
cannot be added without a range: tests/test_checks.py fails for any numeric CLI option or Config field
that has none. A value out of range raises MitosegError naming the setting, its range and the value.
"""

from __future__ import annotations

import argparse
import math
import numbers
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from mitoseg.errors import MitosegError


@dataclass(frozen=True)
class Rule:
    """A number of type `kind` (int or float) in the range from `low` to `high` (None: unbounded),
    each end excluded when `open_low` / `open_high`."""

    kind: type = float
    low: float | None = None
    high: float | None = None
    open_low: bool = False
    open_high: bool = False

    def words(self) -> str:
        noun = "an integer" if self.kind is int else "a number"
        if self.low is not None and self.high is not None:
            left, right = "(" if self.open_low else "[", ")" if self.open_high else "]"
            return f"{noun} in {left}{self.low:g}, {self.high:g}{right}"
        if self.low is not None:
            return f"{noun} {'>' if self.open_low else '>='} {self.low:g}"
        if self.high is not None:
            return f"{noun} {'<' if self.open_high else '<='} {self.high:g}"
        return noun

    def ok(self, value: Any) -> bool:
        if isinstance(value, bool | np.bool_) or not isinstance(value, numbers.Real):
            return False
        if self.kind is int and not float(value).is_integer():
            return False
        if not math.isfinite(value):
            return False
        if self.low is not None and (value < self.low or (self.open_low and value == self.low)):
            return False
        return not (self.high is not None and (value > self.high or (self.open_high and value == self.high)))


POSITIVE_INT = Rule(int, 1)
COUNT = Rule(int, 0)
POSITIVE = Rule(float, 0, open_low=True)
FRACTION = Rule(float, 0, 1, open_high=True)  # [0, 1)
PROBABILITY = Rule(float, 0, 1, open_low=True, open_high=True)  # (0, 1)

RULES: dict[str, Rule] = {
    # training (Config fields and `mitoseg train` options)
    "epochs": POSITIVE_INT, "minutes": POSITIVE, "iterations_per_epoch": POSITIVE_INT,
    "patch_xy": Rule(int, 16), "patch_z": POSITIVE_INT, "batch": POSITIVE_INT, "lr": POSITIVE,
    "weight_decay": Rule(float, 0), "warmup_iterations": COUNT, "fg_fraction": Rule(float, 0, 1),
    "val_fraction": Rule(float, 0, 0.9), "seed": COUNT, "intensity_aug": Rule(float, 0, 2),
    "slice_jitter": Rule(float, 0, 0.5), "bn_batches": COUNT, "bn_freeze": COUNT, "ema": FRACTION,
    "elastic": Rule(float, 0, 1), "gamma_field": Rule(float, 0, 1),
    "loader_workers": COUNT, "validate_every": POSITIVE_INT, "context_slices": Rule(int, 0, 8),
    "planes": Rule(int, 1, 3),
    "full_resolution": Rule(int, 0, 256), "boundary_weight": Rule(float, 0, 100),
    # prediction
    "tile_xy": Rule(int, 16), "tile_z": POSITIVE_INT, "overlap": FRACTION, "batch_size": POSITIVE_INT,
    "threshold": PROBABILITY, "z_sigma": Rule(float, 0),
    "value_threshold": POSITIVE,  # label and evaluate: a probability for mitoseg probabilities, else a raw value
    # labels, objects, units
    "label_threshold": Rule(float, 0), "unlabeled": Rule(float), "min_size": COUNT,
    "voxel_size": Rule(float, 0.1),  # nm: no microscope's voxel is smaller; sizes in µm (0.005) are caught
    "block": POSITIVE_INT,
    "connectivity": Rule(int, 6, 26),
    # Dask and reports
    "tile": POSITIVE_INT, "workers": POSITIVE_INT, "slices": POSITIVE_INT,
    "iou_threshold": Rule(float, 0, 1, open_low=True),
    # annotation suggestions
    "count": POSITIVE_INT, "gap": COUNT, "box": Rule(int, 16),
}


# a value out of range is named as the Python keyword (the command line's own parser names its --options)
SHOWN = {"value_threshold": "threshold"}
HINTS = {"voxel_size": " (voxel sizes are in nm: micrometres x 1000)"}  # said after a value out of range
PER_AXIS = ("voxel_size",)  # settings that always hold one number per axis (z, y, x)


def check(**values: Any) -> None:
    """Raise MitosegError for the first value out of its rule's range; None passes (a default applies),
    tuples, lists and arrays are checked element by element (voxel_size, block, tile), and a `PER_AXIS` one
    must hold three (`per_axis`). Unknown names are a bug."""
    for name, value in values.items():
        if value is None:
            continue
        if name in PER_AXIS:
            per_axis(**{name: value})
        rule = RULES[name]
        for v in value if isinstance(value, tuple | list | np.ndarray) else (value,):
            if not rule.ok(v):
                raise MitosegError(f"{SHOWN.get(name, name)} must be {rule.words()}, not {v!r}{HINTS.get(name, '')}")


def voxel_size(value: Any) -> None:
    """`check(voxel_size=value)` where a size is needed to measure: None (what `io.voxel_size` says of a file
    stating none) refused too."""
    if value is None:
        raise MitosegError("voxel_size must be three numbers (z, y, x) in nm, not None (io.voxel_size gives None "
                           "for a volume that states no size: give the size)")
    check(voxel_size=value)


def flags(**values: Any) -> None:
    """Raise MitosegError unless each value is True or False (a string such as "no" would count as true)."""
    for name, value in values.items():
        if not isinstance(value, bool | np.bool_):
            raise MitosegError(f"{name} must be True or False, not {value!r}")


def per_axis(**values: Any) -> None:
    """Raise MitosegError unless each value given (not None) holds one number per axis (z, y, x): a voxel
    size or a block of a volume."""
    for name, value in values.items():
        if value is not None and (not isinstance(value, tuple | list | np.ndarray) or len(value) != 3):
            raise MitosegError(f"{SHOWN.get(name, name)} must be three numbers (z, y, x), not {value!r}")


def arg(name: str) -> Callable[[str], int | float]:
    """The argparse `type` of the option for setting `name`: parses the text and checks its range."""
    rule = RULES[name]

    def parse(text: str) -> int | float:
        try:
            value = rule.kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be {rule.words()}, not {text!r}") from None
        if not rule.ok(value):
            raise argparse.ArgumentTypeError(f"must be {rule.words()}, not {text}{HINTS.get(name, '')}")
        return value

    parse.rule = rule  # type: ignore[attr-defined]  # tests find every option's rule here
    parse.__name__ = name
    return parse
