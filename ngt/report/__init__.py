"""The report stage: a sweep directory (or several run directories) in; results.csv,
Summary.md, report.md, index.html and Plotly pages in plots/ out.

    python -m ngt.report outputs/sweeps/<name>        # writes into that directory
    write_report([sweep_dir], out=sweep_dir)           # the same, from Python
"""

__all__ = ["write_report", "Report"]


def __getattr__(name: str):
    # The report's packages (pandas, plotly, scipy) load only when the report is written, so
    # that the callback and ``python -m ngt.report`` can name a missing one in one line.
    if name in __all__:
        from ngt.report import write

        return getattr(write, name)
    raise AttributeError(f"module 'ngt.report' has no attribute {name!r}")
