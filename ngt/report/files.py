"""The report's writes: one that fails (a full disk) names its file, so the one-line error
says where."""

from __future__ import annotations

from pathlib import Path

from ngt.atomic import naming_the_file

TRACEBACK = "report-traceback.txt"  # the report callback's record of a bug in the report


def write_text(path: Path, text: str) -> Path:
    with naming_the_file(path):
        path.write_text(text, encoding="utf-8")
    return path
