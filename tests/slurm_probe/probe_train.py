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
        self.caught = set()
        self.prev = {s: signal.signal(s, self._flag) for s in self.SIGNALS}
        return self

    def __exit__(self, *exc):
        for s, h in self.prev.items():
            signal.signal(s, h)

    def _flag(self, signum, frame):
        self.log(f"caught {signal.Signals(signum).name}")
        self.signum = self.signum or signum
        self.caught.add(signum)

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
        elif self.mode == "state":
            jid = os.environ["SLURM_JOB_ID"]
            for _ in range(3):
                sq = subprocess.run(["squeue", "-h", "-j", jid, "-o", "%T %r"], capture_output=True, text=True).stdout.strip()
                sc = subprocess.run(["scontrol", "show", "job", "-o", jid], capture_output=True, text=True).stdout
                st = [w for w in sc.split() if w.startswith(("JobState=", "Reason=", "Restarts=", "PreemptTime=", "EndTime="))]
                self.log(f"squeue: {sq!r} scontrol: {st}")
                time.sleep(1)
            sys.exit(-1)
        elif self.mode == "recipe":
            usr2 = self.prev[signal.SIGUSR2]
            if callable(usr2) and (signal.SIGUSR2 in self.caught or _slurm_state() == "RUNNING"):
                usr2(signal.SIGUSR2, None)
            sys.exit(-1)


class Train:
    def __init__(self, workdir, steps=40, step_s=1.0, mode="chain", workers=0):
        self.workdir, self.steps, self.step_s, self.mode = str(workdir), steps, step_s, mode
        self.workers = workers
        self.worker_ign = os.environ.get("PROBE_WORKER_IGN") == "1"

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
            early = iter(_loader(-self.workers, self.worker_ign)) if self.workers < 0 else None  # workers forked before our handlers
            with Preemption(self.mode, log) as pre:
                batches = iter(_loader(self.workers)) if self.workers > 0 else early
                while step < self.steps:
                    if batches is not None:
                        next(batches)
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


def _ignore_preemption_signals(worker_id):
    for s in (signal.SIGUSR2, signal.SIGTERM):
        signal.signal(s, signal.SIG_IGN)  # only the main process checkpoints and requeues


def _loader(workers, ignore=False):
    import torch.utils.data as tud

    class Forever(tud.IterableDataset):
        def __iter__(self):
            i = 0
            while True:
                time.sleep(0.05)
                yield i
                i += 1

    return tud.DataLoader(Forever(), batch_size=None, num_workers=workers, persistent_workers=True,
                          worker_init_fn=_ignore_preemption_signals if ignore else None)


def _slurm_state():
    jid = os.environ.get("SLURM_JOB_ID")
    r = subprocess.run(["squeue", "-h", "-j", jid, "-o", "%T"], capture_output=True, text=True) if jid else None
    return r.stdout.strip() if r and r.returncode == 0 else None
