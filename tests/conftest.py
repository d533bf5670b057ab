"""Shared fixtures: an isolated cache, offline hub access, and a tiny CLI runner."""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

# Read by `datasets` at import time: no test ever waits on the network.
os.environ["HF_HUB_OFFLINE"] = "1"
REPO = Path(__file__).resolve().parents[1]

# A model and budget small enough for a CLI run in a few seconds on 2 cores. The reference
# attention: the CPU default (compiled) spends seconds compiling in every process, and is
# tested on its own (test_backends.py) and end to end once (test_data_hub.py's smoke run).
TINY = [
    "model.d_model=32", "model.n_layers=2", "model.n_heads=2", "model.coord_dim=8", "model.mlp_dim=64",
    "model.context=64", "train.batch_size=4", "train.block_size=32", "train.full_val=false", "budget=smoke",
    "model.attn_impl=reference",
]


# Modules that share a session fixture (the report's trained sweep) go to one worker.
SHARED = {"test_pages": "test_report"}


@pytest.hookimpl(tryfirst=True)  # before pytest-xdist reads the groups
def pytest_collection_modifyitems(items):
    """Under pytest-xdist (--dist loadgroup), each module's tests run on one worker, so a
    module's fixtures are built once; modules sharing one run together."""
    for item in items:
        module = item.module.__name__
        item.add_marker(pytest.mark.xdist_group(SHARED.get(module, module)))


@pytest.fixture(scope="session", autouse=True)
def isolated_cache(tmp_path_factory):
    os.environ["NGT_CACHE"] = str(tmp_path_factory.mktemp("ngt-cache"))


@pytest.fixture(scope="session")
def small_corpus(tmp_path_factory) -> Path:
    """The first 60k characters of the bundled corpus: fast to tokenize and to pass over."""
    text = (REPO / "ngt" / "assets" / "shakespeare_corpus.txt").read_text()[:60_000]
    path = tmp_path_factory.mktemp("corpus") / "small.txt"
    path.write_text(text)
    return path


def numbers(run: Path) -> list[dict]:
    """A run's evaluations without the wall clock (elapsed_s): what must match, number for
    number, between a run and its interrupted-and-resumed twin."""
    return [{k: v for k, v in json.loads(line).items() if k != "elapsed_s"}
            for line in (run / "metrics.jsonl").read_text().splitlines()]


def expect_data_error(cfg, *fragments: str) -> None:
    """Loading ``cfg`` fails with one line holding every fragment."""
    from ngt.data import load_token_data
    from ngt.errors import NGTError

    with pytest.raises(NGTError) as info:
        load_token_data(cfg)
    message = str(info.value)
    assert "\n" not in message
    for fragment in fragments:
        assert fragment in message


def screen(*args: str, cwd: Path, check: bool = False, timeout: float = 300) -> subprocess.CompletedProcess:
    """Run ``python -m ngt.screen`` as a user would, in ``cwd``."""
    proc = subprocess.run([sys.executable, "-m", "ngt.screen", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"ngt.screen failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


def one_error_line(proc: subprocess.CompletedProcess) -> str:
    """The one ``error:`` line of a command that failed as a user's mistake or a run's
    failure should: no traceback, one line."""
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0, out[-3000:]
    assert "Traceback" not in out, out[-3000:]
    lines = [ln for ln in out.splitlines() if "error:" in ln]
    assert len(lines) == 1, out[-3000:]
    return lines[0]


def wait_for_rows(metrics: Path, n: int, proc: subprocess.Popen, timeout: float = 120) -> None:
    """Wait until a running run has written ``n`` evaluations."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if metrics.exists() and len(metrics.read_text().splitlines()) >= n:
            return
        if proc.poll() is not None:
            raise AssertionError(f"the run ended first (exit {proc.returncode})")
        time.sleep(0.05)
    raise AssertionError(f"{metrics} never reached {n} rows")


def compose(*overrides: str):
    """The config ``python -m ngt.screen <overrides>`` would train, composed in-process."""
    from hydra import compose as hydra_compose, initialize_config_dir
    from omegaconf import OmegaConf

    from ngt.config import CONF, register_configs
    from ngt.naming import register_resolvers

    register_configs()
    register_resolvers()
    with initialize_config_dir(config_dir=str(CONF), version_base=None):
        return OmegaConf.to_object(hydra_compose("config", overrides=list(overrides)))
