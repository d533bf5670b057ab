"""Stop at a step boundary when asked to, save, then let the signal do what it would have.

Slurm and submitit announce preemption and time limits with SIGUSR2 (submitit's
handler requeues the job) and plain ``scancel``/``scontrol requeue`` with SIGTERM.
Neither may interrupt a half-done optimizer step, so the handlers here only take note;
the trainer saves its full state at the next boundary and then calls ``chain()``,
which hands the signal to whoever handled it before (submitit's USR2 handler requeues
the job and exits). If that handler returns, as submitit's SIGTERM one does (Slurm
itself requeues or cancels the job), or there was none, the process ends as signalled:
a run stopped early must never look like a finished job to the launcher.

Ctrl-C (SIGINT) is a stop request too: the run saves the step it is in and ends, as by
SIGTERM, without a traceback. A second Ctrl-C before that boundary interrupts at once
(KeyboardInterrupt); the run then resumes from its last periodic checkpoint.

The processes of a data-parallel run may be signalled at different moments, or only some
of them: each step adds up their ``votes()``, and all stop at the same boundary and end by
the signal they ``agree()`` on.
"""

from __future__ import annotations

import os
import signal
import threading
from typing import Any, Optional

SIGNALS = (signal.SIGTERM, signal.SIGUSR2, signal.SIGINT)
# Which one the processes of a run end by when they were sent different ones: a warning
# before preemption or a time limit (submitit requeues the job on it) over a stop.
PRECEDENCE = (signal.SIGUSR2, signal.SIGTERM, signal.SIGINT)


class StopRequest:
    def __init__(self) -> None:
        self.signum: Optional[int] = None
        self.agreed: Optional[int] = None  # data-parallel runs: the stop every process takes
        self._previous: dict[int, Any] = {}

    @property
    def requested(self) -> bool:
        return self.signum is not None

    @property
    def signal_name(self) -> str:
        signum = self.agreed or self.signum
        return signal.Signals(signum).name if signum else ""

    def votes(self) -> list[float]:
        """This process's request as a count per signal, to add up over the processes."""
        return [float(self.signum == s) for s in SIGNALS]

    def agree(self, totals: list[float]) -> None:
        """The stop that the processes' votes, added up, ask for (None: go on)."""
        asked = {s for s, n in zip(SIGNALS, totals) if n > 0}
        self.agreed = next((s for s in PRECEDENCE if s in asked), None)

    def _note(self, signum: int, frame) -> None:
        if signum == signal.SIGINT and self.signum == signal.SIGINT:
            raise KeyboardInterrupt  # asked twice: do not wait for the step to end
        self.signum = signum

    def __enter__(self) -> "StopRequest":
        if threading.current_thread() is threading.main_thread():
            for s in SIGNALS:
                if signal.getsignal(s) != signal.SIG_IGN:  # told to ignore it: keep ignoring it
                    self._previous[s] = signal.signal(s, self._note)
        return self

    def __exit__(self, *exc) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler)
        self._previous.clear()

    def chain(self) -> None:
        """Deliver the noted (or agreed) signal to the handler installed before ours; if it
        returns, end the process with the signal's default action. Does not return."""
        signum = self.agreed or self.signum
        previous = self._previous.get(signum)
        self.__exit__()
        # Python's own SIGINT handler would raise KeyboardInterrupt: a traceback, for a run
        # that stopped as asked.
        if callable(previous) and previous is not signal.default_int_handler:
            previous(signum, None)
        signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), signum)
