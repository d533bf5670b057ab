"""The offline install (issue 16) and the non-editable wheel install (issue 21).

scripts/wheelhouse.py builds the bundle; a fresh virtual environment that holds only torch,
as a cluster node does, installs ngt from it with no index; then, from a directory outside
the repository, the installed wheel finds its configs and trains a smoke grid that ends
with its report. `python -m pytest -m install` runs these (left out of the default run:
they build and install a bundle of 110-170 MB; about 1.5 minutes on 2 cores).
"""

from __future__ import annotations

import importlib.metadata as md
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO, TINY, one_error_line

pytestmark = pytest.mark.install

# Never in the bundle: torch, what only torch needs, the test tools.
EXCLUDED_FROM_BUNDLE = ("torch", "nvidia", "triton", "sympy", "mpmath", "networkx", "pytest")


def run(cmd: list, cwd: Path, env: dict, timeout: float = 300) -> subprocess.CompletedProcess:
    proc = subprocess.run([str(c) for c in cmd], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, (f"{' '.join(map(str, cmd))} failed ({proc.returncode}):\n"
                                  f"{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return proc


def torch_closure() -> list[md.Distribution]:
    """torch and the distributions it requires, recursively (markers judged here, no extras)."""
    from packaging.requirements import Requirement

    seen: dict[str, md.Distribution] = {}
    todo = ["torch"]
    while todo:
        dist = md.distribution(todo.pop())
        name = dist.metadata["Name"].lower()
        if name in seen:
            continue
        seen[name] = dist
        for line in dist.requires or []:
            req = Requirement(line)
            if req.marker is None or req.marker.evaluate({"extra": ""}):
                todo.append(req.name)
    return list(seen.values())


def expose_torch(folder: Path) -> None:
    """Symlinks to this machine's torch and what it needs, with their .dist-info, in one folder:
    a venv that adds it by a .pth file imports torch and nothing else of the system."""
    folder.mkdir()
    for dist in torch_closure():
        site = Path(dist.locate_file(""))
        tops = {f.parts[0] for f in dist.files or [] if f.parts[0] not in ("..", "__pycache__")}
        assert tops, f"{dist.metadata['Name']} lists no files (no RECORD)"
        for top in tops:
            if (site / top).exists() and not (folder / top).exists():
                (folder / top).symlink_to(site / top)


def node_env(home: Path, venv: Path) -> dict:
    """A clean environment: no pip configuration (this machine's finds torch on disk and local
    mirrors), no PYTHONPATH, no user site, offline."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PIP_", "PYTHON", "VIRTUAL_ENV"))}
    env.update(PATH=f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}", PIP_CONFIG_FILE=os.devnull,
               PYTHONNOUSERSITE="1", HF_HUB_OFFLINE="1", NGT_CACHE=str(home / "cache"), VIRTUAL_ENV=str(venv))
    return env


@pytest.fixture(scope="module")
def wheelhouse(tmp_path_factory) -> tuple[Path, str]:
    out = tmp_path_factory.mktemp("bundle") / "wheelhouse"
    proc = run([sys.executable, REPO / "scripts" / "wheelhouse.py", "--out", out], cwd=REPO, env=dict(os.environ),
               timeout=600)
    return out, proc.stdout


@pytest.fixture(scope="module")
def node(tmp_path_factory, wheelhouse) -> tuple[Path, dict, Path]:
    """(the venv's python, its environment, a working directory outside the repository), ngt
    installed from the wheelhouse with no index: the node's documented command."""
    home = tmp_path_factory.mktemp("node")
    venv, work = home / "venv", home / "work"
    work.mkdir()
    run([sys.executable, "-m", "venv", venv], cwd=home, env=dict(os.environ))
    python, env = venv / "bin" / "python", node_env(home, venv)
    expose_torch(home / "torch-only")
    site = Path(run([python, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"], work, env).stdout.strip())
    (site / "node_torch.pth").write_text(f"{home / 'torch-only'}\n")

    # Before: torch imports, and nothing of ngt's own requirements does.
    run([python, "-c", "import torch"], work, env)
    for module in ("pandas", "hydra", "ngt"):
        probe = subprocess.run([python, "-c", f"import {module}"], cwd=work, env=env, capture_output=True, text=True)
        assert probe.returncode != 0, f"{module} leaked into the torch-only venv"

    # The node's command; --no-compile leaves bytecode to the first import (11 of 15 s here, plotly's thousands of files).
    run([python, "-m", "pip", "install", "-q", "--no-compile", "--no-index", "--find-links", wheelhouse[0], "ngt"],
        work, env)
    return python, env, work


def test_bundle_holds_ngt_and_no_torch_nor_test_tools(wheelhouse):
    out, printed = wheelhouse
    names = [w.name.lower() for w in out.glob("*.whl")]
    assert any(n.startswith("ngt-") for n in names)
    assert not [n for n in names if n.startswith(EXCLUDED_FROM_BUNDLE)], names
    assert out.with_name(out.name + ".tar").stat().st_size > sum(w.stat().st_size for w in out.glob("*.whl"))
    assert f"pip install --no-index --find-links {out}" in printed and " MB)" in printed


def test_every_extra_installs_from_the_bundle_alone(node, wheelhouse):
    python, env, work = node
    target = wheelhouse[1].strip().splitlines()[-1].split()[-1].strip("'")  # the printed command's, e.g. ngt[hf]
    run([python, "-m", "pip", "install", "--dry-run", "-q", "--no-index", "--find-links", wheelhouse[0], target],
        work, env)


def test_installed_wheel_finds_its_configs_from_another_directory(node):
    python, env, work = node
    where = run([python, "-c", "import ngt; print(ngt.__file__)"], work, env).stdout
    assert "site-packages" in where and str(REPO) not in where  # the wheel, not the checkout
    printed = run([python, "-m", "ngt.screen", "--cfg", "job", "variant=baseline"], work, env).stdout
    assert "name: baseline" in printed and "max_steps" in printed


def test_smoke_grid_trains_and_reports_from_another_directory(node):
    python, env, work = node
    run([python, "-m", "ngt.screen", "-m", "sweep=smoke", *TINY, "hydra.sweep.dir=smoke"], work, env, timeout=600)
    sweep = work / "smoke"
    for name in ("results.csv", "Summary.md", "report.md", "index.html"):
        assert (sweep / name).is_file(), name
    assert len(list(sweep.glob("variant=*/checkpoints/last.pt"))) == 2


def test_hub_data_without_datasets_says_so_in_one_line(node):
    python, env, work = node
    if subprocess.run([python, "-c", "import datasets"], env=env, cwd=work, capture_output=True).returncode == 0:
        pytest.skip("datasets is still a core requirement of ngt, so every install has it")
    proc = subprocess.run([python, "-m", "ngt.screen", "data=wikitext2", *TINY], cwd=work, env=env,
                          capture_output=True, text=True, timeout=300)
    line = one_error_line(proc)
    assert "datasets" in line and "pip install" in line and "ModuleNotFoundError" not in line, line


def test_report_without_plotly_says_so_in_one_line(node):
    python, env, work = node
    # What Hydra imports at every command's start; it must not need the report's packages.
    probe = "import sys, ngt.report.callback; print('pandas' in sys.modules)"
    if subprocess.run([python, "-c", probe], cwd=work, env=env, capture_output=True, text=True).stdout.strip() != "False":
        pytest.skip("importing ngt.report.callback loads the report's packages (ngt/report/__init__.py)")
    # A package that raises as a missing one does, first on the path: the venv stays whole for the other tests.
    (work / "hidden" / "plotly").mkdir(parents=True)
    (work / "hidden" / "plotly" / "__init__.py").write_text(
        "raise ModuleNotFoundError(\"No module named 'plotly'\", name='plotly')\n")
    hidden = {**env, "PYTHONPATH": str(work / "hidden")}
    grid = subprocess.run([python, "-m", "ngt.screen", "-m", "variant=baseline", *TINY, "budget.max_steps=2",
                           "hydra.sweep.dir=noplotly"], cwd=work, env=hidden, capture_output=True, text=True, timeout=300)
    log = grid.stdout + grid.stderr
    assert grid.returncode == 1 and "Traceback" not in log, log[-3000:]
    (line,) = [x for x in log.splitlines() if "the report could not be written" in x]
    assert "'plotly'" in line and "pip install plotly" in line and "python -m ngt.report noplotly" in line, line
    assert json.loads(next((work / "noplotly").glob("*/summary.json")).read_text())["status"] == "completed"

    again = subprocess.run([python, "-m", "ngt.report", "noplotly"], cwd=work, env=hidden, capture_output=True,
                           text=True, timeout=120)
    assert "'plotly'" in one_error_line(again)
