"""Sampling: cached decoding gives the logits of full recomputation (every variant, across
the sliding window, and as greedy text from a trained run through the CLI), the
sampling filters, streaming, and one-line errors for paths that hold no run."""

import io
import subprocess
import sys
from dataclasses import replace

import pytest
import torch

from conftest import TINY as TINY_RUN
from conftest import screen
from ngt.config import VariantConfig
from ngt.data import BPETokenizer
from ngt.generate import main
from ngt.model import build_model
from ngt.model.decode import KVCache
from ngt.sampling import Decoder, Sampler, TextStream
from test_model import SWITCHES, TINY

TINY_MODEL = replace(TINY, attn_impl="reference")  # context 12: windows slide after a few tokens

VARIANTS = [VariantConfig(mass=m, radius=r, use_rsqrt=q) for m, r, q in SWITCHES] + [VariantConfig(arch="baseline")]
IDS = [f"ngt-{m}-{r}-{'rsqrt' if q else 'div'}" for m, r, q in SWITCHES] + ["baseline"]


def tiny_model(variant: VariantConfig) -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model(TINY_MODEL, variant, vocab_size=11, device=torch.device("cpu")).double().eval()


@pytest.mark.parametrize("variant", VARIANTS, ids=IDS)
def test_cached_logits_equal_full_forward(variant):
    model = tiny_model(variant)
    idx = torch.randint(0, 11, (2, TINY_MODEL.context), generator=torch.Generator().manual_seed(1))
    full, _ = model(idx)
    cache = KVCache(TINY_MODEL.n_layers, TINY_MODEL.context)
    chunks = [3, 4] + [1] * (TINY_MODEL.context - 7)  # a prompt, a chunk after it, then token by token
    parts, start = [], 0
    for n in chunks:
        parts.append(model(idx[:, start : start + n], cache=cache)[0])
        start += n
    torch.testing.assert_close(torch.cat(parts, 1), full, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("variant", [VARIANTS[0], VARIANTS[-1]], ids=[IDS[0], IDS[-1]])
def test_sliding_window_cached_equals_recomputed(variant):
    """Past the context the window slides and the cache is rebuilt: still the recomputed logits.
    (The switches are the cache's business, covered above; this is the window's.)"""
    model = tiny_model(variant)
    tokens = torch.randint(0, 11, (40,), generator=torch.Generator().manual_seed(2)).tolist()
    cached, recomputed = Decoder(model, use_cache=True), Decoder(model, use_cache=False)
    prompt = tokens[:15]  # longer than the context: only its last 12 tokens are seen
    torch.testing.assert_close(cached.start(prompt), recomputed.start(prompt), rtol=1e-10, atol=1e-10)
    lengths = []
    for t in tokens[15:]:
        torch.testing.assert_close(cached.push(t), recomputed.push(t), rtol=1e-10, atol=1e-10)
        lengths.append(len(cached.window))
    assert lengths.count(TINY_MODEL.context // 2) >= 3 and max(lengths) == TINY_MODEL.context


def test_sampling_filters():
    logits = torch.tensor([1.0, 3.0, 2.0, 0.0])
    finite = lambda s: torch.isfinite(s.filter(logits)).nonzero().flatten().tolist()
    assert finite(Sampler(top_k=2)) == [1, 2]
    probs = torch.softmax(logits, 0).sort(descending=True).values  # 0.64, 0.24, 0.09, 0.03
    assert finite(Sampler(top_p=float(probs[0]) + 0.01)) == [1, 2]
    assert finite(Sampler(top_p=float(probs[0]) - 0.01)) == [1]
    assert Sampler(temperature=0.0)(logits, torch.Generator()) == 1
    draws = lambda seed: [Sampler(1.0, top_k=2)(logits, g) for g in [torch.Generator().manual_seed(seed)] for _ in range(200)]
    assert draws(0) == draws(0) and set(draws(0)) == {1, 2}


def test_stream_waits_for_a_whole_character():
    tok = BPETokenizer.train([["plain ascii text"] * 10], vocab_size=300)
    ids = tok.encode("é!")
    assert len(ids) == 3  # é is two byte tokens here
    out = io.StringIO()
    stream = TextStream(tok, out)
    stream(ids[0])
    assert out.getvalue() == ""
    stream(ids[1])
    assert out.getvalue() == "é"
    stream(ids[2])
    stream.flush()
    assert out.getvalue() == "é!"


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory, small_corpus):
    out = tmp_path_factory.mktemp("gen")
    # BPE, so that the run's own tokenizer (carried in its checkpoint) is not the default one.
    screen(*TINY_RUN, "model.attn_impl=reference", "data=text", f"data.path={small_corpus}", "data.tokenizer=bpe",
           "data.vocab_size=300", f"hydra.run.dir={out / 'run'}", cwd=out, check=True)
    return out / "run"


def generate_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ngt.generate", *args], capture_output=True, text=True, timeout=120)


def test_greedy_text_same_with_and_without_cache(trained_run):
    # 100 new tokens pass the run's context of 64: the cached run slides its window too.
    args = [f"run={trained_run}", "prompt=To be, or not to be:", "max_new_tokens=100", "temperature=0"]
    cached, recomputed = generate_cli(*args), generate_cli(*args, "cache=false")
    assert cached.returncode == 0, cached.stderr
    assert recomputed.returncode == 0, recomputed.stderr
    assert cached.stdout.startswith("To be, or not to be:") and len(cached.stdout) > len("To be, or not to be:") + 50
    assert cached.stdout == recomputed.stdout
    assert "tokens/s, cached" in cached.stderr and "tokens/s, recomputed" in recomputed.stderr


SAMPLING = ["checkpoint=last", "max_new_tokens=20", "top_k=5", "top_p=0.9", "num_samples=2"]


def test_samples_are_reproducible(trained_run, capsys):
    args = [f"run={trained_run}", *SAMPLING, "seed=3"]
    main(args)
    first = capsys.readouterr().out
    main(args)
    assert capsys.readouterr().out == first and first.count("-" * 40) == 1


def test_interactive_reads_prompts_until_end_of_input(trained_run):
    proc = subprocess.run(
        [sys.executable, "-m", "ngt.generate", f"run={trained_run}", *SAMPLING, "interactive"],
        input="ROMEO:\n\nJULIET:\n", capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    # Each prompt opens both of its samples; the empty line in between is reported and skipped.
    assert proc.stdout.count("ROMEO:") >= 2 and proc.stdout.count("JULIET:") >= 2
    assert proc.stderr.count("tokens/s") == 4 and "error: the prompt is empty" in proc.stderr


def test_bench_reports_both_timings(trained_run, capsys):
    main([f"run={trained_run}", "bench=true", "max_new_tokens=10", "bench_repeats=1"])
    out = capsys.readouterr().out
    assert "cached" in out and "recompute" in out and "same tokens: yes" in out


def _error(args, capsys) -> str:
    with pytest.raises(SystemExit) as exit:
        main(args)
    assert exit.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err
    return err


def test_paths_without_a_run_give_one_line_errors(tmp_path, capsys):
    assert "no such run directory or checkpoint" in _error([f"run={tmp_path / 'nope'}"], capsys)
    assert "has no checkpoints/best.pt" in _error([f"run={tmp_path}"], capsys)
    text = tmp_path / "notes.txt"
    text.write_text("not a checkpoint")
    assert "is not a checkpoint" in _error([f"run={text}"], capsys)
    foreign = tmp_path / "foreign.pt"
    torch.save({"weights": torch.zeros(2)}, foreign)
    assert "not an ngt checkpoint" in _error([f"run={foreign}"], capsys)


def test_bad_arguments_give_one_line_errors(capsys, tmp_path):
    assert f"needs its key: python -m ngt.generate run={tmp_path}" in _error([str(tmp_path)], capsys)
    assert "unknown argument 'temp'" in _error(["run=x", "temp=1"], capsys)
    assert "not a valid float" in _error(["run=x", "temperature=hot"], capsys)
    assert "key=value" in _error(["run"], capsys)
    assert "run=" in _error([], capsys)
    assert "device='tpu' is out of range: auto, cpu, cuda or cuda:N" in _error(["run=x", "device=tpu"], capsys)
