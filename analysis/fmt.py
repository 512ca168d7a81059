"""One way to write a value with its interval, ``v [lo, hi]``, for every report, command and figure (the format
spec, e.g. ``.4g`` or ``.4f``, is the caller's: it depends on what the number is)."""

from __future__ import annotations


def interval(lo: float, hi: float, spec: str = ".4g") -> str:
    """``[lo, hi]``."""
    return f"[{lo:{spec}}, {hi:{spec}}]"


def with_interval(value: float, lo: float, hi: float, spec: str = ".4g", interval_spec: str | None = None) -> str:
    """``value [lo, hi]``; the interval in ``interval_spec`` when given, else in ``spec``."""
    return f"{value:{spec}} {interval(lo, hi, interval_spec or spec)}"


__all__ = ["interval", "with_interval"]
