"""Probe words (ngt/probes.py, ngt/report/probes_page.py): found where a regular expression
finds them, under both tokenizers; recorded the same across a kill and a resume; drawn on
a page that renders offline in headless Chromium.

The corpus is made here: the original's probe words as speaker names and in running
text, beside look-alikes that must not match (KINGDOM, king's, SONG, PARSON, WARWICK,
PEACEFUL); PRINCESS only in the training split, DAUGHTER once in validation and more
often in training, JESTER nowhere.
"""

import copy
import logging
import re
import shutil

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from ngt.batches import random_batch
from ngt.config import CONF, DataConfig, ModelConfig, VariantConfig
from ngt.data import load_token_data
from ngt.errors import NGTError
from ngt.model import build_model
from ngt.model.layers import causal_lm_loss
from ngt.probes import (FILE, ProbeSet, evenly, find_word, group_distances, keep_probe_steps, read_probes,
                        record_probes, token_forms, word_edges)
from ngt.report.probes_page import write_probe_page

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")

GROUPS = {**yaml.safe_load((CONF / "probes" / "original.yaml").read_text())["groups"], "court": ["FOOL", "JESTER"]}
WORDS = [w for words in GROUPS.values() for w in words]
SCENE = [
    "KING.", "Where is the QUEEN? The KINGDOM waits, and the PRINCE with it; the king's men sing.",
    "QUEEN.", "My SON, my SON, thy FATHER loves thee, and the FOOL sings a SONG.",
    "PRINCE.", "Peace, MOTHER: the PARSON brings PEACE, not WAR, to WARWICK.",
    "MOTHER.", "LOVE, not HATE; a PEACEFUL night for the KING and his FOOL.",
]
BLOCK, K = 32, 3
TINY = ModelConfig(d_model=32, n_layers=2, n_heads=2, coord_dim=8, head_coord_dim=4, mlp_dim=64, context=BLOCK,
                   attn_impl="reference")
CPU = torch.device("cpu")
NGT_DEFAULT = VariantConfig()
EVERY, LAST = 3, 9  # evaluations at steps 0, 3, 6, 9


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    lines = []
    for i in range(30):  # the last 40% of the characters validate: about the last 11 scenes
        lines += (["PRINCESS.", "Good night."] if i < 5 else []) + (["DAUGHTER.", "Adieu."] if i < 5 or i == 29 else [])
        lines += SCENE
    path = tmp_path_factory.mktemp("probe-corpus") / "scenes.txt"
    path.write_text("\n".join(lines) + "\n")
    return path


def _data(corpus, kind: str):
    return load_token_data(DataConfig(name=f"probes-{kind}", source="text", path=str(corpus), tokenizer=kind,
                                      vocab_size=400, val_fraction=0.4), progress=False)


@pytest.fixture(scope="module", params=["char", "bpe"])
def data(request, corpus):
    return _data(corpus, request.param)


def test_every_whole_word_is_found_where_it_is_written(data):
    tok, edges = data.tokenizer, word_edges(data.tokenizer)
    for split in ("train", "val"):
        ids = getattr(data, split)
        text = tok.decode(ids.tolist())
        ends = np.cumsum([len(tok.decode([i])) for i in ids.tolist()])  # an ASCII text: token texts add up
        assert ends[-1] == len(text)
        for word in WORDS:
            expected = [m.start() for m in re.finditer(rf"(?<![A-Za-z0-9]){word}(?![A-Za-z0-9])", text)]
            spans = find_word(ids, token_forms(tok, word), edges)
            assert [int(ends[s + n - 1]) - len(word) for s, n in spans] == expected, (split, word)
            assert all(tok.decode(ids[s : s + n].tolist()) in (word, " " + word) for s, n in spans)
    forms = {w: token_forms(tok, w) for w in WORDS if w != "JESTER"}
    if tok.kind == "bpe":  # the space folded into most words (ĠKING), some words in several tokens (F ATHER)
        assert sum(len(f) == 2 for f in forms.values()) > len(forms) // 2
        assert any(len(form) > 1 for f in forms.values() for form in f)
    else:  # one token per character: one form, KING in 4 tokens
        assert all(len(f) == 1 and len(f[0]) == len(w) for w, f in forms.items())


def test_occurrences_are_fixed_and_validation_first_each_in_its_own_window(data, caplog):
    with caplog.at_level(logging.INFO, logger="ngt.probes"):
        probes = ProbeSet.locate(GROUPS, data, BLOCK, K, 4)
    missing = [r.getMessage() for r in caplog.records if "JESTER" in r.getMessage()]
    assert len(missing) == 1 and "neither" in missing[0]
    by_word: dict = {}
    for o in probes.occurrences:
        by_word.setdefault(o.word, []).append(o)
    assert set(by_word) == set(WORDS) - {"JESTER"}
    edges, forms = word_edges(data.tokenizer), lambda w: token_forms(data.tokenizer, w)
    king = evenly(find_word(data.val, forms("KING"), edges), K)
    assert [(o.split, o.offset, o.tokens) for o in by_word["KING"]] == [("val", s, n) for s, n in king]
    assert [o.split for o in by_word["PRINCESS"]] == ["train"] * K
    assert [o.split for o in by_word["DAUGHTER"]] == ["val", "train", "train"]
    tok = data.tokenizer
    for o, window, pos in zip(probes.occurrences, probes.windows, probes.positions.tolist()):
        start = o.offset + o.tokens - 1 - pos
        assert start >= 0 and window.tolist() == getattr(data, o.split)[start : start + BLOCK].tolist()
        assert tok.decode(window[pos - o.tokens + 1 : pos + 1].tolist()).lstrip(" ") == o.word
        assert pos == BLOCK - 1 or o.offset + o.tokens < BLOCK  # the word ends its window where it can
    assert len(probes.windows) % 4 == 0  # whole batches, the last padded with copies
    again = ProbeSet.locate(GROUPS, data, BLOCK, K, 4)
    assert again.occurrences == probes.occurrences and torch.equal(again.windows, probes.windows)


class Scalars:
    """What a TensorBoard writer was given."""

    def __init__(self):
        self.seen = []

    def add_scalar(self, tag, value, step):
        self.seen.append((tag, value, step))


@pytest.fixture(scope="module")
def char_probes(corpus):
    data = _data(corpus, "char")
    return data, ProbeSet.locate(GROUPS, data, BLOCK, K, 16)


def _model(data, variant=NGT_DEFAULT, seed=0):
    torch.manual_seed(seed)
    model = build_model(TINY, variant, data.tokenizer.vocab_size, CPU)
    return model, torch.optim.AdamW(model.parameters(), lr=3e-3), torch.Generator().manual_seed(seed)


def _steps(model, opt, gen, data, n):
    model.train()
    for _ in range(n):
        x, y = random_batch(data.train, 4, BLOCK, gen)
        loss = causal_lm_loss(model(x)[0], y)
        opt.zero_grad()
        loss.backward()
        opt.step()


def _train(run_dir, data, probes, model, opt, gen, start, stop, writer):
    """Train from step ``start`` to ``stop``, recording at every evaluated step after ``start``."""
    for step in range(start + 1, stop + 1):
        _steps(model, opt, gen, data, 1)
        if step % EVERY == 0:
            record_probes(run_dir, step, probes.measure(model, CPU), writer)


def _run(run_dir, data, probes, variant=NGT_DEFAULT, seed=0) -> Scalars:
    writer, (model, opt, gen) = Scalars(), _model(data, variant, seed)
    run_dir.mkdir(parents=True)
    record_probes(run_dir, 0, probes.measure(model, CPU), writer)
    _train(run_dir, data, probes, model, opt, gen, 0, LAST, writer)
    return writer


def test_measuring_reads_the_words_last_token_and_leaves_training_as_it_was(char_probes):
    data, probes = char_probes
    model, _, _ = _model(data)
    rng = torch.get_rng_state()
    records = probes.measure(model, CPU)
    assert model.training and torch.equal(rng, torch.get_rng_state())
    i = next(i for i, o in enumerate(probes.occurrences) if o.word == "PRINCESS")
    with torch.no_grad():
        z, m = model.eval()(probes.windows[i : i + 1], want_coords=True)[1]
    pos = probes.positions[i]
    assert np.array_equal(np.float32(records[i]["z"]), z[0, pos].numpy()) and np.float32(records[i]["m"]) == m[0, pos]
    assert {k: records[i][k] for k in ("group", "word", "split")} == {"group": "royalty", "word": "PRINCESS",
                                                                       "split": "train"}


def test_a_damaged_line_is_named_and_the_file_left_as_it_is(tmp_path):
    text = '{"step": 0, "probes": []}\n{"step": 3, "probes": [\n{"step": 6, "probes": []}\n'
    (tmp_path / FILE).write_text(text)
    with pytest.raises(NGTError, match=r"probes.jsonl, line 2: not a probes record"):
        keep_probe_steps(tmp_path, [0])
    assert (tmp_path / FILE).read_text() == text


@pytest.fixture(scope="module")
def sweep(char_probes, tmp_path_factory):
    """Two NGT runs recorded at steps 0, 3, 6 and 9, a baseline and an NGT run never
    evaluated; the runs table as the report has it, and ngt_default's scalars."""
    data, probes = char_probes
    root = tmp_path_factory.mktemp("probe-sweep")
    scalars = _run(root / "ngt_default", data, probes)
    _run(root / "mass_in_value", data, probes, VariantConfig(name="mass_in_value", mass="value"), seed=2)
    for name in ("baseline", "no_repulsion"):
        (root / name).mkdir()
    runs = pd.DataFrame({"name": ["baseline", "ngt_default", "mass_in_value", "no_repulsion"],
                         "arch": ["baseline", "ngt", "ngt", "ngt"]})
    runs["path"] = [str(root / n) for n in runs["name"]]
    return root, runs, scalars


def test_tensorboard_gets_each_groups_distances(sweep):
    root, _, scalars = sweep
    records = read_probes(root / "ngt_default")
    assert sorted({r["step"] for r in records}) == sorted({step for _, _, step in scalars.seen}) == [0, 3, 6, 9]
    at9 = group_distances([r for r in records if r["step"] == 9])
    assert {(tag, v) for tag, v, step in scalars.seen if step == 9} == {
        (f"probes/{g}/{kind}", v) for g, d in at9.items() for kind, v in d.items()}
    assert set(at9["royalty"]) == {"within", "across"}
    assert set(at9["court"]) == {"across"}  # FOOL alone in its group: no distance within it


@pytest.mark.parametrize("kept", [(0, 3, 6), (0, 3)], ids=["checkpoint-evaluated", "checkpoint-evaluation-lost"])
def test_records_are_the_same_after_a_kill_and_a_resume(char_probes, sweep, tmp_path, kept):
    data, probes = char_probes
    run, writer = tmp_path / "killed", Scalars()
    model, opt, gen = _model(data)
    run.mkdir()
    record_probes(run, 0, probes.measure(model, CPU), writer)
    _train(run, data, probes, model, opt, gen, 0, 6, writer)
    saved = (copy.deepcopy(model.state_dict()), copy.deepcopy(opt.state_dict()), gen.get_state(),
             torch.get_rng_state())  # the checkpoint at step 6
    _train(run, data, probes, model, opt, gen, 6, LAST, writer)
    with open(run / FILE, "a") as f:
        f.write('{"step": 12, "probes": [{"group": "roy')  # killed mid-append

    model, opt, gen = _model(data, seed=1)
    model.load_state_dict(saved[0])
    opt.load_state_dict(saved[1])
    gen.set_state(saved[2])
    torch.set_rng_state(saved[3])
    keep_probe_steps(run, kept)  # the steps of the metrics rows the resume keeps
    if 6 not in kept:  # its metrics row was lost, so the trainer evaluates the checkpoint again
        record_probes(run, 6, probes.measure(model, CPU), writer)
    _train(run, data, probes, model, opt, gen, 6, LAST, writer)
    whole = sweep[0] / "ngt_default"  # the same run, never stopped
    assert (run / FILE).read_text() == (whole / FILE).read_text()
    assert read_probes(run) == read_probes(whole)


def test_keeping_steps_of_a_run_without_probes_writes_nothing(tmp_path):
    keep_probe_steps(tmp_path, [0, 3])
    assert not (tmp_path / FILE).exists() and read_probes(tmp_path) == []


def test_no_page_without_probe_records(sweep, tmp_path):
    _, runs, _ = sweep
    assert write_probe_page(runs[runs["name"] == "baseline"], tmp_path) is None
    assert not any(tmp_path.iterdir())


@pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed (.ci/run installs it)")
def test_the_page_renders_offline_without_errors(sweep, tmp_path_factory):
    from test_pages import Browser, render  # test_pages drives Chromium for every page of a report

    root, runs, _ = sweep
    page = write_probe_page(runs, root / "report")
    assert page == root / "report" / "plots" / "probes.html"
    assert "no_repulsion: no probe records" in page.read_text()
    browser = Browser(tmp_path_factory.mktemp("chromium-profile"))
    try:
        seen = render(browser, page, root / "probes.png")
    finally:
        browser.close()
    assert seen["loaded"] and seen["errors"] == []
    assert [u for u in seen["requests"] if not u.startswith(("file:", "data:", "about:"))] == []
    assert len(seen["plots"]) == 3  # the distances, then the positions of each NGT run with records
    for plot in seen["plots"]:
        assert plot["drawn"] and plot["traces"] > 0 and plot["points"] > 0 and plot["svg"] > 0, plot
