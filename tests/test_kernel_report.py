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
@pytest.mark.skipif(tuple(int(p) for p in triton.__version__.split(".")[:2]) < (3, 6), reason="needs Triton >= 3.6")
def test_reports_registers_stack_and_both_loops_of_a_kernel():
    """The query pass at its one shape (the quickest kernel to compile): one line, with its
    two main loops; the interior tiles' skips the masks, so it must come out the shorter."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    proc = subprocess.run([sys.executable, "scripts/kernel_report.py", "--kernels", "queries", "--radius", "soft"],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "sm_90a, bf16 values" in proc.stdout and "'RADIUS': 2" in proc.stdout
    line = re.search(r"^queries\s+32x32\s+warps 4 stages 2: (\d+) registers, (\d+) B stack, (\d+) B shared "
                     r"\| interior (\d+)/pair \d+ bars; edge (\d+)/pair \d+ bars;$", proc.stdout, re.M)
    assert line, proc.stdout
    registers, shared, interior, edge = int(line[1]), int(line[3]), int(line[4]), int(line[5])
    assert 0 < registers <= 255 and shared > 0
    assert 0 < interior < edge
