"""One exception type for problems the user can fix.

Anything raised as ``NGTError`` is reported as a single line naming the problem and
exits non-zero; everything else is a bug and keeps its traceback in the run's log.
"""

import re
import sys
from contextlib import contextmanager
from typing import Iterator

from hydra.errors import HydraException
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


@contextmanager
def exit_on_user_error() -> Iterator[None]:
    """For a command's entry point: a bad config or override (Hydra, OmegaConf) or an
    ``NGTError`` ends the process with one ``error: ...`` line and exit status 2."""
    try:
        yield
    except (HydraException, OmegaConfBaseException) as e:
        print(f"error: {one_line(e)}", file=sys.stderr)
        sys.exit(2)
    except NGTError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
