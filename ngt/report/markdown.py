"""Markdown tables from DataFrames (pandas' own needs the optional ``tabulate``)."""

from __future__ import annotations

import math
from typing import Callable, Mapping

import pandas as pd

Format = Callable[[object], str]


def num(digits: int) -> Format:
    return lambda x: "n/a" if _missing(x) else f"{float(x):.{digits}f}"


def signed(digits: int) -> Format:
    return lambda x: "n/a" if _missing(x) else f"{float(x):+.{digits}f}"


def ratio(x: object) -> str:
    return "n/a" if _missing(x) else f"{float(x):.2f}x"


def percent(x: object) -> str:
    return "n/a" if _missing(x) else f"{float(x):+.1%}"


def integer(x: object) -> str:
    return "n/a" if _missing(x) else f"{int(x):,}"


def text(x: object) -> str:
    return "" if _missing(x) else str(x)


def _missing(x: object) -> bool:
    if x is None or x is pd.NA:
        return True
    return isinstance(x, float) and math.isnan(x)


def table(df: pd.DataFrame, columns: Mapping[str, tuple[str, Format]]) -> str:
    """``columns``: {column: (header, format)}, in the order shown."""
    if df.empty:
        return "_(none)_\n"
    heads = [h for h, _ in columns.values()]
    lines = ["| " + " | ".join(heads) + " |", "|" + "|".join("---" for _ in heads) + "|"]
    for _, row in df.iterrows():
        cells = [fmt(row[col]).replace("|", "\\|").replace("\n", " ") for col, (_, fmt) in columns.items()]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
