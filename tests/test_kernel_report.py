"""scripts/kernel_report.py, run as a user runs it: the Triton kernels compiled for an
H100 on this machine, with no GPU, and their report."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

triton = pytest.importorskip("triton")
REPO = Path(__file__).resolve().parents[1]
BIN = Path(triton.__file__).parent / "backends" / "nvidia" / "bin"


@pytest.mark.skipif(not (BIN / "cuobjdump").exists(), reason="this Triton wheel bundles no NVIDIA tools")
def test_reports_registers_spills_and_both_loops_of_a_kernel():
    """The query pass at its one shape (the quickest kernel to compile): one line, with
    its two main loops, the edge tiles' and the interior's, the interior's the shorter."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    proc = subprocess.run([sys.executable, "scripts/kernel_report.py", "--kernels", "queries", "--radius", "soft"],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "sm_90a, bf16 values" in proc.stdout and "'RADIUS': 2" in proc.stdout
    line = re.search(r"^queries\s+32x32\s+warps 4 stages 2: (\d+) registers, (\d+) bytes spilled, (\d+) B shared "
                     r"\| loops: (.*)$", proc.stdout, re.M)
    assert line, proc.stdout
    registers, _, shared, loops = int(line[1]), int(line[2]), int(line[3]), line[4]
    assert 0 < registers <= 255 and shared > 0
    per_pair = [int(n) for n in re.findall(r"(\d+)/pair \d+ bars;", loops)]
    assert len(per_pair) == 2 and per_pair[0] > per_pair[1] > 0, loops
