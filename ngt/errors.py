"""One exception type for problems the user can fix.

Anything raised as ``NGTError`` is reported as a single line naming the problem; so is an
``OSError`` (a full disk, a read-only folder), naming the file. Exit status 2 means bad
input (a setting, a path, a command that does not fit its run directory), 1 a failure
while running (``RunFailed``: a run that diverged; an ``OSError``). Everything else is a
bug and keeps its traceback in the run's directory.
"""

import re
import sys
from contextlib import contextmanager
from typing import Iterator

from hydra.errors import HydraException
from omegaconf.errors import OmegaConfBaseException


class NGTError(Exception):
    """A bad config, a missing or broken file, or a failed run."""


class RunFailed(NGTError):
    """A run that started and could not go on (exit status 1, not 2)."""


# Packages a stage imports only when it runs, and how to install each: an offline bundle may
# leave one out (scripts/wheelhouse.py --without datasets), or an environment may lack one.
INSTALL = {"datasets": "pip install 'ngt[hf]'", "pandas": "pip install pandas", "plotly": "pip install plotly",
           "scipy": "pip install scipy", "tensorboard": "pip install tensorboard"}


@contextmanager
def needs_packages(stage: str) -> Iterator[None]:
    """Around a stage's imports: a package of ``INSTALL`` that is not installed becomes one
    ``NGTError`` line naming it and the install command, not a traceback."""
    try:
        yield
    except ModuleNotFoundError as e:
        top = (e.name or "").split(".")[0]
        if top not in INSTALL:
            raise  # a module of ngt's own, or another package: a bug, with its traceback
        raise NGTError(f"{stage} needs the package '{top}', which is not installed here: {INSTALL[top]}") from None


def os_error_line(e: OSError) -> str:
    """'No space left on device: /path/file' (the file a write or read failed on)."""
    where = e.filename or "(a file)"
    return f"{e.strerror or type(e).__name__}: {where}"


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
    ``NGTError`` ends the process with one ``error: ...`` line and exit status 2, a
    ``RunFailed`` or an ``OSError`` with status 1."""
    try:
        yield
    except (HydraException, OmegaConfBaseException) as e:
        print(f"error: {one_line(e)}", file=sys.stderr)
        sys.exit(2)
    except RunFailed as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)
    except NGTError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    except OSError as e:
        print(f"error: {os_error_line(e)}", file=sys.stderr)
        sys.exit(1)
