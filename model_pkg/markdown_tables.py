"""Nested settings and metrics as YAML/JSON-safe values and as two-column Markdown tables (the model cards' tables,
`model_pkg.hub.write_model_card`)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

__all__ = ["markdown_table", "plain", "table_cell"]


def plain(value: Any) -> Any:
    """Convert numpy scalars/arrays, tuples and Paths to YAML/JSON-safe Python values."""
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    if hasattr(value, "tolist") and callable(value.tolist):  # numpy scalar or array
        return plain(value.tolist())
    if isinstance(value, Path):
        return str(value)
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return str(value)


def _flatten(d: dict[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    rows: list[tuple[str, Any]] = []
    for key, value in d.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            rows.extend(_flatten(value, f"{name}."))
        else:
            rows.append((name, value))
    return rows


def table_cell(value: Any) -> str:
    """One Markdown table cell: floats to 4 decimals (or %g), lists as JSON, pipes and newlines escaped."""
    if isinstance(value, bool):
        text = str(value)
    elif isinstance(value, float):
        text = f"{value:.4f}" if math.isfinite(value) and value != 0 and 1e-4 <= abs(value) < 1e6 else f"{value:g}"
    elif isinstance(value, list):
        text = json.dumps(value)
    else:
        text = str(value)
    return text.replace("|", "\\|").replace("\n", " ")


def markdown_table(d: dict[str, Any], header: tuple[str, str]) -> str:
    """A two-column table of `d`, nested keys flattened with dots (`a.b`), one row per leaf value."""
    lines = [f"| {header[0]} | {header[1]} |", "| --- | --- |"]
    lines += [f"| {table_cell(k)} | {table_cell(v)} |" for k, v in _flatten(d)]
    return "\n".join(lines)
