"""The preemption recipe from scripts/SLURM_NOTES.md, verbatim, for the probes."""
import os
import signal
import subprocess
import sys


class Preemption:
    """Inside `with Preemption() as pre:`, SIGUSR2/SIGTERM only set a flag; call
    `pre.check(save)` at every step boundary: it saves, then requeues or exits."""

    def __enter__(self):
        self.caught = set()
        self.prev = {s: signal.signal(s, lambda n, f: self.caught.add(n))
                     for s in (signal.SIGUSR2, signal.SIGTERM)}
        return self

    def __exit__(self, *exc):
        for s, h in self.prev.items():
            signal.signal(s, h)

    def check(self, save):
        if not self.caught:
            return
        save()  # first: once the job is requeued, Slurm may kill this process at any moment
        self.__exit__()
        requeue = self.prev[signal.SIGUSR2]  # submitit's: checkpoint() + scontrol requeue + sys.exit(-1)
        if callable(requeue) and (signal.SIGUSR2 in self.caught or _slurm_state() == "RUNNING"):
            requeue(signal.SIGUSR2, None)
        sys.exit(-1)  # scancel / scontrol requeue / time limit: Slurm is already ending the job


def _slurm_state():
    job = os.environ.get("SLURM_JOB_ID")
    r = job and subprocess.run(["squeue", "-h", "-j", job, "-o", "%T"], capture_output=True, text=True)
    return r.stdout.strip() if r and r.returncode == 0 else None
