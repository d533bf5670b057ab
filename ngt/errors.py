"""One exception type for problems the user can fix.

Anything raised as ``NGTError`` is reported as a single line naming the problem and
exits non-zero; everything else is a bug and keeps its traceback in the run's log.
"""


class NGTError(Exception):
    """A bad config, a missing or broken file, or a diverged run."""
