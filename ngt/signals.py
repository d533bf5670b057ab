"""Stop at a step boundary when asked to, save, then let the signal do what it would have.

Slurm and submitit announce preemption and time limits with SIGUSR2 (submitit's
handler requeues the job) and plain ``scancel``/``scontrol requeue`` with SIGTERM.
Neither may interrupt a half-done optimizer step, so the handlers here only take note;
the trainer saves its full state at the next boundary and then calls ``chain()``,
which hands the signal to whoever handled it before (submitit's USR2 handler requeues
the job and exits). If that handler returns, as submitit's SIGTERM one does (Slurm
itself requeues or cancels the job), or there was none, the process ends as signalled:
a run stopped early must never look like a finished job to the launcher.
"""

from __future__ import annotations

import os
import signal
import threading
from typing import Any, Optional

SIGNALS = (signal.SIGTERM, signal.SIGUSR2)


class StopRequest:
    def __init__(self) -> None:
        self.signum: Optional[int] = None
        self._previous: dict[int, Any] = {}

    @property
    def requested(self) -> bool:
        return self.signum is not None

    @property
    def signal_name(self) -> str:
        return signal.Signals(self.signum).name if self.signum else ""

    def _note(self, signum: int, frame) -> None:
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
        """Deliver the noted signal to the handler installed before ours; if it returns,
        end the process with the signal's default action. Does not return."""
        signum, previous = self.signum, self._previous.get(self.signum)
        self.__exit__()
        if callable(previous):
            previous(signum, None)
        signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), signum)
