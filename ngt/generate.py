"""``python -m ngt.generate run=<run dir or checkpoint> prompt="..."``: samples from a trained run.

Arguments are ``key=value`` like the trainer's overrides, but parsed here rather than
by Hydra: Hydra's override grammar would reject or reinterpret prompts holding
``,`` ``(`` ``=`` or quotes ("To be, or not to be" is a sweep to it). Every value is
taken verbatim and checked against ``GenerateConfig``.
"""

from __future__ import annotations

import statistics
import sys
import time
import zipfile
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Sequence, get_type_hints

import torch
import torch.nn as nn

from ngt.config import setting
from ngt.data import Tokenizer
from ngt.errors import NGTError
from ngt.rundir import RunDir
from ngt.sampling import Decoder, Sampler, TextStream, generate
from ngt.runtime import pick_device
from ngt.trained import load_trained


@dataclass
class GenerateConfig:
    run: str = setting("", "run directory (outputs/runs/...) or a checkpoint file")
    checkpoint: str = setting("best", "in a run directory: best | last")
    prompt: str = setting("\n", "text to continue")
    max_new_tokens: int = setting(200, "tokens to generate per sample")
    temperature: float = setting(0.8, "0 = greedy")
    top_k: int = setting(0, "keep the k most likely tokens; 0 = all")
    top_p: float = setting(1.0, "keep the smallest set of tokens with this probability; 1 = all")
    seed: int = setting(0, "seed of the sampling generator")
    num_samples: int = setting(1, "samples per prompt")
    interactive: bool = setting(False, "keep reading prompts from the terminal")
    cache: bool = setting(True, "false: recompute the whole window for every token (slow; for checking)")
    device: str = setting("auto", "auto | cpu | cuda | cuda:N")
    threads: int = setting(0, "CPU threads for torch; 0 = torch's default")
    bench: bool = setting(False, "time cached against recomputed greedy decoding of max_new_tokens tokens")
    bench_repeats: int = setting(3, "runs of each in the benchmark")


_BOOLS = {"true": True, "yes": True, "1": True, "false": False, "no": False, "0": False}


def _convert(key: str, value: str, kind: type):
    try:
        if kind is bool:
            return _BOOLS[value.lower()]
        return kind(value)
    except (KeyError, ValueError):
        raise NGTError(f"{key}={value!r} is not a valid {kind.__name__}") from None


def parse_args(argv: Sequence[str]) -> GenerateConfig:
    kinds = get_type_hints(GenerateConfig)
    values = {}
    for arg in argv:
        key, sep, value = arg.partition("=")
        if not sep and kinds.get(key) is bool:  # `interactive` alone reads as interactive=true
            sep, value = "=", "true"
        if not sep and Path(arg).exists():  # a run directory or checkpoint typed without its key
            raise NGTError(f"'{arg}' needs its key: python -m ngt.generate run={arg}")
        if not sep:
            raise NGTError(f"arguments are key=value, got '{arg}' (python -m ngt.generate help lists them)")
        if key not in kinds:
            raise NGTError(f"unknown argument '{key}' (known: {', '.join(kinds)})")
        values[key] = _convert(key, value, kinds[key])
    cfg = GenerateConfig(**values)
    checks = [
        (bool(cfg.run), "run=<run directory or checkpoint file> is required"),
        (cfg.checkpoint in ("best", "last"), f"checkpoint must be best or last, got '{cfg.checkpoint}'"),
        (cfg.max_new_tokens >= 0, "max_new_tokens must be >= 0"),
        (cfg.temperature >= 0, "temperature must be >= 0 (0 = greedy)"),
        (cfg.top_k >= 0, "top_k must be >= 0 (0 = off)"),
        (0 < cfg.top_p <= 1, "top_p must be in (0, 1]"),
        (cfg.num_samples >= 1 and cfg.bench_repeats >= 1, "num_samples and bench_repeats must be >= 1"),
    ]
    for ok, message in checks:
        if not ok:
            raise NGTError(message)
    return cfg


def usage() -> str:
    lines = ['usage: python -m ngt.generate run=<run dir or checkpoint> [prompt="..."] [key=value ...]',
             "       (a true/false option alone, such as interactive, means option=true)", ""]
    for f in fields(GenerateConfig):
        lines.append(f"  {f.name + '=' + repr(f.default):<24} {f.metadata['help']}")
    return "\n".join(lines)


@dataclass
class Loaded:
    model: nn.Module
    tokenizer: Tokenizer
    path: Path
    step: int
    variant: str
    model_name: str


def load_run(run: str, checkpoint: str, device: torch.device) -> Loaded:
    """The model and tokenizer of a run directory's ``checkpoint`` (best | last), or of a file."""
    path = Path(run)
    if path.is_dir():
        path = getattr(RunDir(path), checkpoint)
        if not path.exists():
            raise NGTError(f"{run} has no {path.relative_to(run)}: not a run directory, or a run that never reached a checkpoint")
    elif not path.exists():
        raise NGTError(f"no such run directory or checkpoint: {run}")
    if not zipfile.is_zipfile(path):  # torch.load's own error for, say, a text file is "KeyError: '101'"
        raise NGTError(f"{path} is not a checkpoint, or is truncated (torch.save writes a zip archive; this is not one)")
    t = load_trained(path, device)
    return Loaded(t.model, t.tokenizer, path, t.checkpoint.step, t.config.variant.name, t.config.model.name)


def encode_prompt(tokenizer: Tokenizer, prompt: str) -> list[int]:
    ids = tokenizer.encode(prompt)
    if not ids:
        raise NGTError("the prompt is empty: the model needs at least one token to continue")
    return ids


def sample(cfg: GenerateConfig, loaded: Loaded, prompt: str, generator: torch.Generator) -> None:
    """Stream ``num_samples`` continuations of ``prompt`` to stdout, speed to stderr."""
    ids = encode_prompt(loaded.tokenizer, prompt)
    sampler = Sampler(cfg.temperature, cfg.top_k, cfg.top_p)
    for i in range(cfg.num_samples):
        if i:
            print("-" * 40)
        sys.stdout.write(prompt)
        stream = TextStream(loaded.tokenizer, sys.stdout)
        t0 = time.perf_counter()
        new = generate(Decoder(loaded.model, cfg.cache), ids, cfg.max_new_tokens, sampler, generator, stream)
        seconds = time.perf_counter() - t0
        stream.flush()
        print()
        print(f"[{len(new)} tokens in {seconds:.2f} s: {len(new) / max(seconds, 1e-9):.1f} tokens/s, "
              f"{'cached' if cfg.cache else 'recomputed'}]", file=sys.stderr)


def interactive(cfg: GenerateConfig, loaded: Loaded, generator: torch.Generator) -> None:
    print("Type a prompt and press Enter; Ctrl-D or Ctrl-C quits.", file=sys.stderr)
    while True:
        try:
            line = input("prompt> ")
        except (EOFError, KeyboardInterrupt):
            print(file=sys.stderr)
            return
        try:
            sample(cfg, loaded, line, generator)
        except NGTError as e:  # a prompt the tokenizer cannot encode: ask for another
            print(f"error: {e}", file=sys.stderr)
        except KeyboardInterrupt:  # stops this sample, not the session
            print(file=sys.stderr)


def bench(cfg: GenerateConfig, loaded: Loaded) -> None:
    """Greedy decoding of ``max_new_tokens`` tokens, cached against recomputed, interleaved
    so that load from other processes falls on both alike."""
    ids = encode_prompt(loaded.tokenizer, cfg.prompt)
    n, context = cfg.max_new_tokens, loaded.model.cfg.context
    greedy, gen = Sampler(temperature=0.0), torch.Generator()
    for use_cache in (True, False):  # warm-up: first calls pay for allocations and kernel selection
        generate(Decoder(loaded.model, use_cache), ids, min(n, 8), greedy, gen)
    ms: dict[bool, list[float]] = {True: [], False: []}
    tokens: dict[bool, list[int]] = {}
    for k in range(cfg.bench_repeats):
        for use_cache in (True, False):
            t0 = time.perf_counter()
            tokens[use_cache] = generate(Decoder(loaded.model, use_cache), ids, n, greedy, gen)
            ms[use_cache].append((time.perf_counter() - t0) * 1000 / max(n, 1))
        # Recomputation takes minutes on a busy CPU: show that the benchmark is moving.
        print(f"run {k + 1}/{cfg.bench_repeats}: cached {ms[True][-1]:.2f}, recompute {ms[False][-1]:.2f} ms/token",
              file=sys.stderr)
    device = next(loaded.model.parameters()).device
    print(f"bench: {loaded.variant} ({loaded.model_name}, context {context}), {n} new tokens after a "
          f"{len(ids)}-token prompt, greedy, {device}, {torch.get_num_threads()} threads")
    for use_cache, label in ((True, "cached"), (False, "recompute")):
        runs = sorted(ms[use_cache])
        print(f"  {label:<10} {statistics.median(runs):8.2f} ms/token   ({len(runs)} runs: {runs[0]:.2f} - {runs[-1]:.2f})")
    print(f"  speedup    {statistics.median(ms[False]) / statistics.median(ms[True]):8.1f}x (medians); "
          f"same tokens: {'yes' if tokens[True] == tokens[False] else 'NO'}")
    print(f"  both decode through the same windows: up to {context} tokens, then sliding by half; "
          f"recompute re-encodes its window (1-{context} tokens, {context // 2}-{context} once full) every token")


def run(cfg: GenerateConfig) -> None:
    if cfg.threads > 0:
        torch.set_num_threads(cfg.threads)
    loaded = load_run(cfg.run, cfg.checkpoint, pick_device(cfg.device, setting="device"))
    print(f"loaded {loaded.path} (step {loaded.step}, {loaded.variant}, {loaded.model_name})", file=sys.stderr)
    generator = torch.Generator().manual_seed(cfg.seed)
    if cfg.bench:
        bench(cfg, loaded)
    elif cfg.interactive:
        interactive(cfg, loaded, generator)
    else:
        sample(cfg, loaded, cfg.prompt, generator)


def main(argv: Sequence[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv and argv[0] in ("help", "-h", "--help"):
        print(usage())
        return
    try:
        run(parse_args(argv))
    except NGTError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print(file=sys.stderr)
        sys.exit(130)


if __name__ == "__main__":
    main()
