"""Scratch probe: a 'training' callable that survives USR2/TERM preemption under submitit.

Each step sleeps, then increments a counter; the counter is checkpointed to ckpt.json only
when a signal asked for it (and at the end). events.log records what happened, per process.
"""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path


def ev(workdir, msg):
    line = f"{time.time():.2f} pid={os.getpid()} job={os.environ.get('SLURM_JOB_ID')} " \
           f"restart={os.environ.get('SLURM_RESTART_COUNT', '-')} {msg}"
    with open(Path(workdir) / "events.log", "a") as f:
        f.write(line + "\n")
    print(line, flush=True)


class Preemption:
    """While active, USR2/TERM only set a flag; `check(save)` acts at a step boundary."""

    SIGNALS = (signal.SIGUSR2, signal.SIGTERM)

    def __init__(self, mode="chain", log=print):
        self.mode, self.log, self.signum = mode, log, None

    def __enter__(self):
        self.prev = {s: signal.signal(s, self._flag) for s in self.SIGNALS}
        return self

    def __exit__(self, *exc):
        for s, h in self.prev.items():
            signal.signal(s, h)

    def _flag(self, signum, frame):
        self.log(f"caught {signal.Signals(signum).name}")
        self.signum = self.signum or signum

    def check(self, save):
        if self.signum is None:
            return
        save()
        self.__exit__()
        self.log(f"saved; mode={self.mode} prev_usr2={self.prev[signal.SIGUSR2]!r}")
        if self.mode == "chain":  # submitit's USR2 handler: checkpoint() + scontrol requeue + sys.exit(-1)
            self.prev[signal.SIGUSR2](signal.SIGUSR2, None)
        elif self.mode == "explicit":
            r = subprocess.run(["scontrol", "requeue", os.environ["SLURM_JOB_ID"]], capture_output=True, text=True)
            self.log(f"scontrol requeue rc={r.returncode} {r.stderr.strip()}")
            sys.exit(-1)
        elif self.mode == "exit":
            sys.exit(-1)


class Train:
    def __init__(self, workdir, steps=40, step_s=1.0, mode="chain"):
        self.workdir, self.steps, self.step_s, self.mode = str(workdir), steps, step_s, mode

    def __call__(self):
        wd = Path(self.workdir)
        ckpt = wd / "ckpt.json"
        step = json.loads(ckpt.read_text())["step"] if ckpt.exists() else 0
        log = lambda m: ev(wd, m)
        log(f"start at step {step}")

        def save():
            tmp = ckpt.with_suffix(".tmp")
            tmp.write_text(json.dumps({"step": step}))
            os.replace(tmp, ckpt)
            log(f"checkpoint step={step}")

        try:
            with Preemption(self.mode, log) as pre:
                while step < self.steps:
                    time.sleep(self.step_s)
                    step += 1
                    with open(wd / "steps.log", "a") as f:
                        f.write(f"{step}\n")
                    pre.check(save)
        except BaseException as e:
            log(f"leaving with {type(e).__name__}: {e}")
            raise
        save()
        log("done")
        return step

    def checkpoint(self, *args, **kwargs):
        import submitit
        ev(self.workdir, "Train.checkpoint() called")
        return submitit.helpers.DelayedSubmission(self, *args, **kwargs)
