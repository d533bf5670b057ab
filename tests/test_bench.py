"""``python -m ngt.bench`` on a model small enough to time in seconds: the report's shape."""

import json
import subprocess
import sys

import pytest

from ngt.bench import main

SMALL = ["model.d_model=32", "model.n_layers=1", "model.n_heads=2", "model.coord_dim=8", "model.mlp_dim=64"]


def test_bench_writes_a_row_per_variant_with_ratios(tmp_path):
    out = tmp_path / "bench.json"
    main(["--model", "tiny", "--batch", "2", "--block", "32", "--steps", "2", "--warmup", "1", "--impl", "reference",
          "--threads", "0", "--variants", "baseline,ngt_default,mass_in_value", "--out", str(out), *SMALL])
    report = json.loads(out.read_text())
    assert {"device", "torch", "threads", "config", "memory"} <= set(report)
    rows = {r["variant"]: r for r in report["variants"]}
    assert list(rows) == ["baseline", "ngt_default", "mass_in_value"]
    assert rows["baseline"]["ratio_to_baseline"] == 1.0 and rows["ngt_default"]["attn"] == "reference"
    for r in rows.values():
        assert r["ms_per_step"] > 0 and r["tokens_per_s"] > 0 and r["peak_memory_mb"] > 0
        assert r["batch"] == 2 and r["block"] == 32
        assert r["ratio_to_baseline"] == r["ms_per_step"] / rows["baseline"]["ms_per_step"]
        assert r["tokens_per_s"] == pytest.approx(2 * 32 * 1000 / r["ms_per_step"])
        assert r["compiled"] is None  # eager: no graphs to count


def test_profile_lists_where_each_variants_step_goes(tmp_path, capsys):
    out = tmp_path / "bench.json"
    main(["--model", "tiny", "--batch", "2", "--block", "32", "--steps", "1", "--warmup", "0", "--impl", "reference",
          "--threads", "0", "--variants", "baseline,ngt_default", "--profile", "1", "--out", str(out), *SMALL])
    rows = json.loads(out.read_text())["profile"]
    assert [r["variant"] for r in rows] == ["baseline", "ngt_default"]
    for r in rows:  # on CPU: CPU time per op, and no device figures
        assert r["wall_ms_per_step"] > 0 and r["device_busy_ms_per_step"] is None and r["top_host_ops"] is None
        assert 0 < len(r["top_ops"]) <= 12 and all(op["ms_per_step"] >= 0 and op["calls_per_step"] > 0
                                                   for op in r["top_ops"])
    assert any("addmm" in op["name"] or "linear" in op["name"] for op in rows[0]["top_ops"])
    assert capsys.readouterr().out.count("top ops by CPU time per step:") == 2


def test_context_sweep_doubles_the_context_up_to_the_limit(tmp_path):
    out = tmp_path / "sweep.json"
    main(["--model", "tiny", "--batch", "1", "--context-sweep", "--max-context", "512", "--sweep-steps", "1",
          "--warmup", "0", "--impl", "reference", "--threads", "0", "--variants", "ngt_default", "--out", str(out), *SMALL])
    rows = json.loads(out.read_text())["context_sweep"]
    assert [r["block"] for r in rows] == [256, 512]
    assert all(r["peak_memory_mb"] > 0 for r in rows)


@pytest.mark.parametrize("args, named", [(["variant=nope"], "variant/nope"),
                                         (["model.dropout=abc"], "model.dropout=abc"),
                                         (["train.nope=1"], "train.nope"),
                                         (["train.compile=true", "train.compile_mode=fast"], "train.compile_mode=fast")])
def test_bad_settings_are_one_line_errors(tmp_path, args, named):
    done = subprocess.run([sys.executable, "-m", "ngt.bench", "--model", "tiny", "--out", str(tmp_path / "b.json"),
                           *args], capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert "Traceback" not in done.stderr and done.stderr.startswith("error: ") and named in done.stderr
    assert done.stderr.count("\n") == 1 and not (tmp_path / "b.json").exists()


@pytest.mark.slow
def test_bench_times_the_compiled_model_under_train_compile(tmp_path):
    from torch._dynamo.utils import counters

    counters.clear()
    out = tmp_path / "bench.json"
    main(["--model", "tiny", "--batch", "2", "--block", "32", "--steps", "1", "--warmup", "1", "--impl", "reference",
          "--threads", "0", "--variants", "baseline,ngt_default", "--out", str(out), *SMALL, "train.compile=true"])
    rows = json.loads(out.read_text())["variants"]
    assert [r["variant"] for r in rows] == ["baseline", "ngt_default"] and all(r["ms_per_step"] > 0 for r in rows)
    assert counters["stats"]["unique_graphs"] >= 2  # both models went through torch.compile
    for r in rows:  # each model's step is one graph, not pieces with Python between them
        assert r["compiled"]["graphs"] >= 1 and r["compiled"]["graph_breaks"] == 0 and not r["compiled"]["break_reasons"]


def test_scaling_rows_give_speedup_and_efficiency_against_the_first_count():
    from ngt.bench import scaling_rows

    def run(n, ms):
        return {"threads": 2 // n, "variants": [{"variant": "ngt_default", "processes": n, "accum": 2,
                                                 "ms_per_step": ms, "tokens_per_s": 1000 / ms}]}

    rows = scaling_rows([run(1, 100.0), run(2, 80.0)])
    assert [(r["processes"], r["speedup"], r["efficiency"]) for r in rows] == [(1, 1.0, 1.0), (2, 1.25, 0.625)]


@pytest.mark.slow
def test_processes_time_the_same_global_step_on_each_count(tmp_path):
    out = tmp_path / "bench.json"
    report = main(["--model", "tiny", "--batch", "2", "--block", "32", "--steps", "2", "--warmup", "1", "--impl",
                   "reference", "--variants", "baseline,ngt_default", "--processes", "1,2", "--out", str(out), *SMALL])
    assert json.loads(out.read_text()) == report
    rows = {(r["variant"], r["processes"]): r for r in report["scaling"]}
    assert set(rows) == {(v, n) for v in ("baseline", "ngt_default") for n in (1, 2)}
    assert all(r["accum"] == 2 and r["ms_per_step"] > 0 for r in rows.values())  # lcm(1, 2) micro-batches a step
    assert rows["ngt_default", 1]["speedup"] == 1.0 and rows["ngt_default", 2]["threads"] == 1
    assert (tmp_path / "bench.2.json").exists() and json.loads((tmp_path / "bench.2.json").read_text())["processes"] == 2


def test_help_is_plain_text_and_every_option_explained(capsys):
    from ngt.bench import parse_args

    with pytest.raises(SystemExit):
        parse_args(["--help"])
    text = capsys.readouterr().out
    assert "``" not in text and "examples:" in text
    options = [line.split()[0] for line in text.splitlines() if line.startswith("  --")]
    lines = text.splitlines()
    for option in options:  # each option line, or the line after it, carries a description
        i = next(k for k, line in enumerate(lines) if line.startswith(f"  {option}"))
        assert len(lines[i].split("  ")) > 2 or lines[i + 1].startswith(" " * 10), option
