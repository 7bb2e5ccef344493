"""Parse the paper's ``--compress_rate`` strings without ``eval``.

Grammar (docs/design.md, "Compress rates"): terms joined by ``+``; each term is a float with an optional
repeat count, brackets are cosmetic: ``[0.21]*7+[0.75]*5``, ``[0.]+[0.18]*29``, ``0.1*3``.
Each value is the fraction of filters to *remove*; a layer of ``c`` filters keeps ``int(c * (1 - r))``.
"""
from __future__ import annotations

import re
from typing import Sequence

__all__ = ["CompressRateError", "parse_compress_rate", "format_compress_rate", "kept_width", "as_rate_list"]

_TERM = re.compile(r"^\[?\s*(?P<value>\d+(?:\.\d*)?|\.\d+)\s*\]?(?:\s*\*\s*(?P<count>\d+))?\s*\]?$",
                   re.ASCII)
#: Most entries a rate list may hold (architectures need at most 57; the paper's baselines pass 100).
MAX_RATES = 100_000


class CompressRateError(ValueError):
    """A malformed compress-rate string or a rate list that does not fit an architecture."""


def parse_compress_rate(text: str) -> list[float]:
    """Return the list of removal fractions written in ``text`` (the paper's grammar, no ``eval``).

    >>> parse_compress_rate("[0.]+[0.18]*2")
    [0.0, 0.18, 0.18]
    """
    if not isinstance(text, str):
        raise CompressRateError(f"compress rate must be a string, got {type(text).__name__}")
    stripped = text.strip()
    if not stripped:
        raise CompressRateError("empty compress rate; expected something like '[0.21]*7+[0.75]*5'")
    rates: list[float] = []
    for term in stripped.split("+"):
        match = _TERM.match(term.strip())
        if match is None:
            raise CompressRateError(
                f"bad compress-rate term {_short(term.strip())!r} in {_short(text, 120)!r}; expected '[r]', "
                "'[r]*n' or 'r*n' with 0 <= r < 1 and n a positive integer")
        value = float(match.group("value"))
        if not 0.0 <= value < 1.0:
            raise CompressRateError(f"rate {value} in term {_short(term.strip())!r} is outside [0, 1)")
        count = _repeat_count(match.group("count"), term.strip(), len(rates))
        rates.extend([value] * count)
    return rates


def _repeat_count(digits: str | None, term: str, so_far: int) -> int:
    """The repeat count of ``term``, checked against ``MAX_RATES`` before any list is built."""
    if digits is None:
        return 1
    significant = digits.lstrip("0")
    if len(significant) > len(str(MAX_RATES)) or (significant and so_far + int(significant) > MAX_RATES):
        raise CompressRateError(f"repeat count in term {_short(term)!r} is too large: a rate list holds at most "
                                f"{MAX_RATES} entries")
    if not significant:
        raise CompressRateError(f"bad repeat count in term {_short(term)!r}: expected a positive integer")
    return int(significant)


def _short(text: str, limit: int = 40) -> str:
    """``text`` cut to ``limit`` characters for an error message."""
    return text if len(text) <= limit else text[: limit - 3] + "..."


def as_rate_list(rates: str | Sequence[float] | None, length: int, arch: str = "") -> list[float]:
    """Normalise a string, a list or ``None`` (unpruned) into at least ``length`` validated rates.

    Extra entries are ignored, as in the paper's code (its baselines are built with ``[0.]*100``).
    """
    if rates is None:
        return [0.0] * length
    if isinstance(rates, str):
        values = parse_compress_rate(rates)
    else:
        try:
            values = [float(r) for r in rates]
        except (TypeError, ValueError) as exc:
            raise CompressRateError(f"compress rate must be a string or a list of numbers: {exc}") from None
    for value in values:
        if not 0.0 <= value < 1.0:
            raise CompressRateError(f"rate {value} is outside [0, 1)")
    if len(values) < length:
        where = f" for {arch}" if arch else ""
        raise CompressRateError(f"compress rate has {len(values)} entries but {length} are expected{where}")
    return values


def format_compress_rate(rates: Sequence[float]) -> str:
    """Write ``rates`` back in the paper's grammar, run-length encoded: ``[0.0]+[0.18]*29``."""
    if not rates:
        raise CompressRateError("cannot format an empty rate list")
    terms: list[str] = []
    run_value, run_length = rates[0], 0
    for value in list(rates) + [None]:  # sentinel flushes the last run
        if value == run_value:
            run_length += 1
            continue
        terms.append(f"[{run_value!r}]" + (f"*{run_length}" if run_length > 1 else ""))
        run_value, run_length = value, 1
    return "+".join(terms)


def kept_width(width: int, rate: float) -> int:
    """Filters kept from ``width`` at removal fraction ``rate`` (floor, as in the paper's models)."""
    return int(width * (1 - rate))
