"""Submit Train with submitit, send a signal mid-run, report the timeline.

usage: python run_probe.py NAME MODE SIGNAL_CMD [timeout_min]
  SIGNAL_CMD: usr2 | term | requeue | cancel | preempt | none
"""
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import submitit

sys.path.insert(0, str(Path(__file__).parent))
from probe_train import Train  # noqa: E402

name, mode, sig = sys.argv[1:4]
timeout_min = int(sys.argv[4]) if len(sys.argv) > 4 else 60
steps = int(sys.argv[5]) if len(sys.argv) > 5 else 25
workers = int(sys.argv[6]) if len(sys.argv) > 6 else 0
wd = Path("/tmp/ngt-probe") / name
shutil.rmtree(wd, ignore_errors=True)
wd.mkdir(parents=True)
ex = submitit.AutoExecutor(folder=wd / "submitit", cluster="slurm")
ex.update_parameters(timeout_min=timeout_min, slurm_partition="low", cpus_per_task=1,
                     slurm_signal_delay_s=30)
job = ex.submit(Train(wd, steps=steps, step_s=1.0, mode=mode, workers=workers))
t0 = time.time()
print("job", job.job_id)


def steps():
    p = wd / "steps.log"
    return len(p.read_text().split()) if p.exists() else 0


while steps() < 6:
    time.sleep(0.2)
tsig = time.time()
cmd = {"usr2": ["scancel", "--signal=USR2", job.job_id],
       "term": ["scancel", "--signal=TERM", job.job_id],
       "requeue": ["scontrol", "requeue", job.job_id],
       "cancel": ["scancel", job.job_id],
       "preempt": ["sbatch", "-p", "high", "-c", "2", "-o", "/dev/null", "--wrap", "sleep 3"],
       "none": None}[sig]
if cmd:
    print("signal:", " ".join(cmd), subprocess.run(cmd, capture_output=True, text=True))
try:
    res = job.result()
    print("RESULT", res)
except Exception as e:
    print("EXC", type(e).__name__, str(e)[:1500])
print(f"total {time.time() - t0:.1f}s, state {job.state}")
print((wd / "events.log").read_text())
ev = [l.split() for l in (wd / "events.log").read_text().splitlines()]
starts = [float(l[0]) for l in ev if "start" in l]
if len(starts) > 1:
    print(f"signal -> restarted: {starts[1] - tsig:.1f}s")
s = [int(x) for x in (wd / "steps.log").read_text().split()]
print("steps:", s)
print(subprocess.run(["sacct", "-j", job.job_id, "-D", "-o", "JobID,State,ExitCode,Start,End", "-P"], capture_output=True, text=True).stdout)
