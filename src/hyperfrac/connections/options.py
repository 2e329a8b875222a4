"""Typed, range-checked connection options: the pieces a kind's option schema is made of.

Every kind registers a schema ``{option name: Option}`` with the registry
(:mod:`hyperfrac.connections.registry`); :func:`~hyperfrac.connections.validate_spec` checks a
``{"kind": ..., **options}`` spec against it without building a module. Each ``Option`` checks
one value and returns it normalised (``2`` -> ``2.0`` for a float, ``"width"`` -> ``["width"]``
for a subset), or raises :class:`ConnectionSpecError` with one sentence naming the kind, the
option, what was expected and what was given.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any


class ConnectionSpecError(ValueError, TypeError):
    """A connection spec names an unknown kind or option, or gives an option a bad value.

    A ValueError (a bad value) and, like Python's own unknown-keyword errors, a TypeError, so
    callers that caught either before keep working.
    """


def _fail(kind: str, name: str, wanted: str, value: Any) -> ConnectionSpecError:
    return ConnectionSpecError(
        f"{kind}: {name} must be {wanted}, got {value!r} ({type(value).__name__})"
    )


@dataclass(frozen=True)
class Option:
    """One option of a connection kind: ``check`` returns the value normalised or raises."""

    doc: str

    def check(self, kind: str, name: str, value: Any) -> Any:
        raise NotImplementedError


@dataclass(frozen=True)
class Flag(Option):
    """A real bool: ``"false"`` (a string, which Python reads as true) is refused."""

    def check(self, kind: str, name: str, value: Any) -> bool:
        if not isinstance(value, bool):
            raise _fail(kind, name, "a bool (true or false, unquoted)", value)
        return value


@dataclass(frozen=True)
class Count(Option):
    """An integer >= 1 (not a bool, not a float such as 2.0)."""

    def check(self, kind: str, name: str, value: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise _fail(kind, name, "an integer >= 1", value)
        return int(value)


def _as_float(kind: str, name: str, value: Any, wanted: str) -> float:
    """A real number; a numeric string is read too, because YAML 1.1 loads ``1e-5`` (no dot)
    as the string '1e-5'."""
    if isinstance(value, bool):
        raise _fail(kind, name, wanted, value)
    try:
        return float(value)
    except (TypeError, ValueError):
        raise _fail(kind, name, wanted, value) from None


@dataclass(frozen=True)
class Positive(Option):
    """A finite float > 0 (eps, scales)."""

    def check(self, kind: str, name: str, value: Any) -> float:
        wanted = "a finite number > 0"
        x = _as_float(kind, name, value, wanted)
        if not (math.isfinite(x) and x > 0.0):
            raise _fail(kind, name, wanted, value)
        return x


@dataclass(frozen=True)
class Fraction(Option):
    """A float strictly between 0 and 1 (an init probability or diagonal)."""

    def check(self, kind: str, name: str, value: Any) -> float:
        wanted = "a number strictly between 0 and 1"
        x = _as_float(kind, name, value, wanted)
        if not 0.0 < x < 1.0:
            raise _fail(kind, name, wanted, value)
        return x


@dataclass(frozen=True)
class Choice(Option):
    """One string out of ``choices``."""

    choices: tuple[str, ...] = ()

    def check(self, kind: str, name: str, value: Any) -> str:
        if not isinstance(value, str) or value not in self.choices:
            raise _fail(kind, name, f"one of {list(self.choices)}", value)
        return value


@dataclass(frozen=True)
class Subset(Option):
    """Some of ``choices``: a single string or a list of them; normalised to a list."""

    choices: tuple[str, ...] = ()

    def check(self, kind: str, name: str, value: Any) -> list[str]:
        items = [value] if isinstance(value, str) else value
        wanted = f"a list drawn from {list(self.choices)}"
        if not isinstance(items, Sequence) or isinstance(items, bytes):
            raise _fail(kind, name, wanted, value)
        if any(not isinstance(v, str) or v not in self.choices for v in items):
            raise _fail(kind, name, wanted, value)
        return list(items)
