"""One exception type for problems the user can fix.

Anything raised as ``NGTError`` is reported as a single line naming the problem and
exits non-zero; everything else is a bug and keeps its traceback in the run's log.
"""

import re

from omegaconf.errors import OmegaConfBaseException


class NGTError(Exception):
    """A bad config, a missing or broken file, or a diverged run."""


def one_line(e: BaseException) -> str:
    """Hydra's and OmegaConf's multi-line messages as one line: what failed, why, the choices."""
    text = str(e)
    line = text.strip().splitlines()[0].rstrip(".") if text.strip() else type(e).__name__
    cause = e.__cause__
    if isinstance(cause, OmegaConfBaseException) and str(cause).strip():
        line += ": " + str(cause).strip().splitlines()[0]
    options = re.search(r"Available options in '[^']+':\n((?:\t.*\n?)+)", text)
    if options:
        line += " (available: " + ", ".join(o.strip() for o in options.group(1).splitlines() if o.strip()) + ")"
    return line
