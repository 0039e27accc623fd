"""Ranges of numeric options, stated once: in ``--help`` (as the option's metavar) and checked at parse time.

A config field declares its range in its type, with one of the aliases below or ``ranged(...)``::

    iters: PositiveInt = 1000                    # --iters INT>=1
    max_side: ranged(int, 64) = 512              # --max-side INT>=64
    ssim_lambda: Fraction = 0.2                  # --ssim-lambda FLOAT[0,1]

:func:`validate_options` walks a config (nested dataclasses included) and raises :class:`ReconError`
naming the first option out of its range by its command-line flag, so ``recon`` exits with code 2 and
one line before anything runs. :func:`option_values` lists every option by flag (the run manifest
compares them on ``--resume``). Torch-free: the CLI imports it before anything heavy.
"""

from __future__ import annotations

import dataclasses
import math
import typing
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import tyro

from recon.errors import ReconError


@dataclass(frozen=True)
class Range:
    """Allowed values of a number: ``lo``/``hi`` bounds (None: unbounded), each closed unless ``*_open``."""

    lo: float | None = None
    hi: float | None = None
    lo_open: bool = False
    hi_open: bool = False

    def metavar(self, kind: type) -> str:
        """``INT>=1``, ``FLOAT>0``, ``FLOAT[0,1]``, ``INT[0,65535]``, ``FLOAT(0,1)``..."""
        name = "INT" if kind is int else "FLOAT"
        if self.lo is not None and self.hi is not None:
            left, right = "(" if self.lo_open else "[", ")" if self.hi_open else "]"
            return f"{name}{left}{_num(self.lo)},{_num(self.hi)}{right}"
        if self.lo is not None:
            return f"{name}{'>' if self.lo_open else '>='}{_num(self.lo)}"
        if self.hi is not None:
            return f"{name}{'<' if self.hi_open else '<='}{_num(self.hi)}"
        return name

    def describe(self) -> str:
        """The range in words for an error message ("at least 1", "in [0, 1]", "greater than 0")."""
        if self.lo is not None and self.hi is not None:
            left, right = "(" if self.lo_open else "[", ")" if self.hi_open else "]"
            return f"in {left}{_num(self.lo)}, {_num(self.hi)}{right}"
        if self.lo is not None:
            return f"{'greater than' if self.lo_open else 'at least'} {_num(self.lo)}"
        if self.hi is not None:
            return f"{'less than' if self.hi_open else 'at most'} {_num(self.hi)}"
        return "a number"

    def contains(self, value: float) -> bool:
        if isinstance(value, float) and not math.isfinite(value):
            return False
        if self.lo is not None and (value <= self.lo if self.lo_open else value < self.lo):
            return False
        return not (self.hi is not None and (value >= self.hi if self.hi_open else value > self.hi))


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else f"{x:g}"


def ranged(kind: type, lo: float | None = None, hi: float | None = None, *, lo_open: bool = False,
           hi_open: bool = False, optional: bool = False, count: int = 1) -> Any:
    """The type ``kind`` (``int`` or ``float``) limited to a range: ``Annotated[kind, Range, metavar]``.

    ``optional``: the option may also be None (``{None}|INT>=16``); ``count`` > 1: a tuple of that many
    values, each in the range.
    """
    r = Range(lo, hi, lo_open, hi_open)
    base: Any = kind if count == 1 else tuple[(kind,) * count]  # type: ignore[misc]
    meta = " ".join([r.metavar(kind)] * count)
    if optional:
        return Annotated[base | None, r, tyro.conf.arg(metavar="{None}|" + meta)]
    return Annotated[base, r, tyro.conf.arg(metavar=meta)]


PositiveInt = ranged(int, 1)
"""An integer >= 1 (counts, sizes, step intervals)."""
NonNegativeInt = ranged(int, 0)
"""An integer >= 0 (0 usually disables or means "automatic")."""
PositiveFloat = ranged(float, 0, lo_open=True)
"""A number > 0 (thresholds, scales, learning rates)."""
NonNegativeFloat = ranged(float, 0)
"""A number >= 0 (weights; 0 disables the term)."""
Fraction = ranged(float, 0, 1)
"""A number in [0, 1] (shares, probabilities, colours)."""
Seed = ranged(int, 0, 2**63 - 1)
"""A random seed: an integer in [0, 2^63 - 1]."""
Port = ranged(int, 0, 65535)
"""A TCP port (0: any free one)."""


def _range_of(hint: Any) -> Range | None:
    if typing.get_origin(hint) is Annotated:
        return next((m for m in hint.__metadata__ if isinstance(m, Range)), None)
    return None


def _omits_prefix(hint: Any) -> bool:
    if typing.get_origin(hint) is not Annotated:
        return False
    return any(m is tyro.conf.OmitArgPrefixes for m in hint.__metadata__)


def _flag(prefix: str, name: str) -> str:
    return "--" + prefix + name.replace("_", "-")


def iter_options(config: Any, prefix: str = "") -> Iterator[tuple[str, Any, Range | None]]:
    """(flag, value, range or None) of every leaf option of a config dataclass, nested ones included
    (their flags get the field's name as a prefix, as tyro builds them, unless marked
    ``tyro.conf.OmitArgPrefixes``)."""
    hints = typing.get_type_hints(type(config), include_extras=True)
    for f in dataclasses.fields(config):
        if not f.init:
            continue
        value = getattr(config, f.name)
        hint = hints.get(f.name)
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            sub = prefix if _omits_prefix(hint) else f"{prefix}{f.name.replace('_', '-')}."
            yield from iter_options(value, sub)
        else:
            yield _flag(prefix, f.name), value, _range_of(hint)


def validate_options(config: Any) -> None:
    """Raise :class:`ReconError` naming the first option outside its declared range.

    Also runs each nested config's own ``validate()`` (relations between options, e.g. odd windows).
    """
    for flag, value, rng in iter_options(config):
        if rng is None or value is None:
            continue
        values = value if isinstance(value, (tuple, list)) else (value,)
        for v in values:
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not rng.contains(v):
                shown = " ".join(str(x) for x in values)
                raise ReconError(f"{flag} must be {rng.describe()}, got {shown}")
    _run_validators(config)


def _run_validators(config: Any) -> None:
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            _run_validators(value)
    check = getattr(config, "validate", None)
    if callable(check):
        check()


def option_values(config: Any) -> dict[str, Any]:
    """Flag -> value of every option (paths as absolute strings, tuples as lists): JSON-ready."""
    out: dict[str, Any] = {}
    for flag, value, _ in iter_options(config):
        if isinstance(value, Path):
            value = str(value.expanduser().resolve())
        elif isinstance(value, tuple):
            value = list(value)
        out[flag] = value
    return out
