"""``python -m ngt.report DIR [DIR ...] [--out OUT] [--window A B]``"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from ngt.errors import NGTError, needs_packages, os_error_line


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m ngt.report", description=(
        "Write results.csv, Summary.md, report.md, index.html and plots/ for a sweep directory "
        "or several run directories."))
    p.add_argument("dirs", nargs="+", type=Path, help="a sweep directory, run directories, or parents of them")
    p.add_argument("--out", type=Path, help="where to write (default: DIR when there is one)")
    p.add_argument("--window", type=int, nargs=2, metavar=("A", "B"),
                   help="throughput between evaluated steps A and B (default: first evaluation after 0 to the "
                        "comparison step)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.out is None and len(args.dirs) > 1:
        p.error("--out is required with several directories")
    if args.window and args.window[0] >= args.window[1]:
        p.error(f"--window {args.window[0]} {args.window[1]}: A must be below B")
    try:
        with needs_packages("the report"):  # torch and plotly load after the arguments are known to be valid
            from ngt.report import write_report
        report = write_report(args.dirs, args.out or args.dirs[0], args.window)
    except NGTError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # --out on a full or read-only disk, or not a directory
        print(f"error: {os_error_line(e)}", file=sys.stderr)
        return 1
    counts = ", ".join(f"{n} {s}" for s, n in report.runs["status"].value_counts().items())
    n = len(report.runs)
    print(f"{n} run{'s' if n != 1 else ''} ({counts}); report in {report.out}:\n"
          f"  {report.out / 'index.html'}\n  {report.out / 'Summary.md'}\n  {report.out / 'report.md'}\n"
          f"  {report.out / 'results.csv'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
