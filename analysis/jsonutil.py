"""JSON helpers: ``json_safe`` (NaN/inf -> null, numpy -> Python) and ``read_json`` with one-line errors."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from analysis.errors import AnalysisError


def json_safe(o: Any) -> Any:
    """A JSON-serialisable copy of ``o``: NaN and infinities become None, numpy scalars and arrays Python ones,
    DataFrames lists of records."""
    if isinstance(o, dict):
        return {str(k): json_safe(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [json_safe(v) for v in o]
    if isinstance(o, np.ndarray):
        return json_safe(o.tolist())
    if hasattr(o, "to_dict") and hasattr(o, "columns"):  # a DataFrame
        return json_safe(o.to_dict(orient="records"))
    if isinstance(o, (np.floating, float)):
        f = float(o)
        return f if math.isfinite(f) else None
    if isinstance(o, np.integer):
        return int(o)
    if isinstance(o, np.bool_):
        return bool(o)
    return o


def read_json(path: str | Path, what: str = "JSON file") -> Any:
    """Parse a JSON file, raising AnalysisError with one line naming the problem (missing, binary, malformed)."""
    p = Path(path)
    if not p.exists():
        raise AnalysisError(f"{what} {str(p)!r} does not exist")
    if p.is_dir():
        raise AnalysisError(f"{what} {str(p)!r} is a directory")
    try:
        text = p.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise AnalysisError(f"{what} {str(p)!r} is not a text file") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise AnalysisError(f"{what} {str(p)!r} is not valid JSON ({e.msg} at line {e.lineno})") from None
