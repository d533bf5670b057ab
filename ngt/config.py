"""The configuration tree: typed dataclasses registered in Hydra's ConfigStore.

Every YAML file under ``conf/`` merges into one of these nodes. A misspelt key, a value
of the wrong type or a choice that does not exist fails when the config is composed
(OmegaConf checks types and ``Enum`` members); a value out of range fails when the
config becomes these objects (each class's ``__post_init__``). ``ngt.screen`` does both
for every job of a command before Hydra creates a directory or submits a job.
"""

from __future__ import annotations

import difflib
import json
import math
import re
from dataclasses import MISSING, dataclass, field, fields, is_dataclass
from enum import Enum, StrEnum
from pathlib import Path
from typing import Any, Optional, get_args, get_type_hints

from hydra.core.config_store import ConfigStore
from omegaconf import OmegaConf

from ngt.errors import NGTError

PACKAGE = Path(__file__).resolve().parent
CONF = PACKAGE / "conf"
SWEEPS = PACKAGE / "sweeps"

# Settings that say where and how fast a run executes, not what it computes: they do not
# name its directory, a completed run is skipped under other values of them, and an
# interrupted one resumes under other values of them. (`continue=` may also change the
# budget: ngt.trainer.resume.)
NEUTRAL_KEYS = ("hydra", "sweep", "force", "probes", "budget.stop_at", "train.device", "train.threads", "train.log_every",
                "train.compile", "train.compile_mode", "train.deterministic", "train.collective_timeout_s",
                "model.attn_impl")


def is_neutral(key: str) -> bool:
    """Whether the dotted config key (or override key, ``hydra/launcher`` included) is neutral."""
    key = key.lstrip("+~").replace("/", ".")
    return any(key == k or key.startswith(k + ".") for k in NEUTRAL_KEYS)


class Arch(StrEnum):
    ngt = "ngt"
    baseline = "baseline"


class Mass(StrEnum):
    scores = "scores"  # score *= m_i m_j
    value = "value"  # V_j *= m_j


class Radius(StrEnum):
    hard = "hard"
    soft = "soft"
    none = "none"


class Init(StrEnum):
    gpt2 = "gpt2"
    torch_default = "torch_default"  # the original's: first loss ~200+ (docs/model.md#initialisation)


class AttnImpl(StrEnum):
    auto = "auto"
    reference = "reference"
    compiled = "compiled"
    triton = "triton"


class Source(StrEnum):
    bundled = "bundled"
    text = "text"
    hf = "hf"
    url = "url"


class TokenizerKind(StrEnum):
    char = "char"
    bpe = "bpe"


# torch.compile's own mode names, dashes included (so not written as a class).
CompileMode = StrEnum("CompileMode", [(m, m) for m in (
    "default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")])

MIN_BPE_VOCAB = 258  # the 256 bytes, <unk>, and room for at least one merge
DEVICES = re.compile(r"auto|cpu|cuda(:\d+)?")  # train.device, generate's device


def _check(ok: bool, key: str, value: Any, allowed: str) -> None:
    if not ok:
        raise NGTError(f"{key}={value!r} is out of range: {allowed}")


def _at_least(obj: Any, prefix: str, minimum: float, *names: str) -> None:
    for name in names:
        value = getattr(obj, name)
        _check(value >= minimum, f"{prefix}.{name}", value, f"at least {minimum}")


def _as_enums(obj: Any, prefix: str) -> None:
    """Plain strings (a checkpoint's config, a test) become the fields' ``Enum`` members."""
    for name, hint in get_type_hints(type(obj)).items():
        kind = next((a for a in get_args(hint) if a is not type(None)), hint)  # Optional[X] -> X
        value = getattr(obj, name)
        if isinstance(kind, type) and issubclass(kind, Enum) and value is not None and not isinstance(value, kind):
            try:
                setattr(obj, name, kind(value))
            except ValueError:
                choices = ", ".join(m.value for m in kind)
                raise NGTError(f"{prefix}.{name}={value!r} is not one of {choices}") from None


def setting(default: Any, help: str) -> Any:
    """A config field with its description, which ``python -m ngt.screen --help`` prints."""
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata={"help": help})
    return field(default=default, metadata={"help": help})


@dataclass
class VariantConfig:
    """Which attention and which NGT switches (docs/model.md#variants)."""

    name: str = setting("ngt_default", "the variant's name in reports")
    arch: Arch = setting(Arch.ngt, "gravity attention (ngt) or the GPT baseline with SDPA")
    mass: Mass = setting(Mass.scores, "masses scale the scores (m_i m_j) or the values (V_j m_j)")
    radius: Radius = setting(Radius.hard, "radius cutoff: hard (-inf beyond r), soft (relu(1 - d2/r^2)) or none")
    use_rsqrt: bool = setting(True, "compute 1/(d2 + eps) as rsqrt squared")
    repulsion_weight: float = setting(0.05, "weight of the repulsion energy in the loss")
    repulsion_interval: int = setting(1, "optimizer steps between repulsion terms; 0 = off")
    repulsion_samples: int = setting(64, "positions sampled for the repulsion energy")

    def __post_init__(self) -> None:
        _as_enums(self, "variant")
        _at_least(self, "variant", 0, "repulsion_weight", "repulsion_interval")
        _at_least(self, "variant", 2, "repulsion_samples")


@dataclass
class ModelConfig:
    """The size, shared by every variant of a grid (docs/model.md)."""

    name: str = setting("tiny", "the size's name in reports")
    d_model: int = setting(128, "width of the hidden states")
    n_layers: int = setting(4, "blocks")
    n_heads: int = setting(4, "attention heads")
    coord_dim: int = setting(32, "c: width of the coordinates z (NGT)")
    head_coord_dim: int = setting(16, "ch: coordinates per head (NGT)")
    mlp_dim: int = setting(512, "NGT's FFN width; the baseline's is solved to match its parameter count")
    context: int = setting(256, "longest sequence (learned positions)")
    dropout: float = setting(0.1, "dropout in attention and FFN")
    init: Init = setting(Init.gpt2, "gpt2 (N(0, 0.02)) or the original's torch_default (first loss ~200+)")
    radius_init: float = setting(4.0, "raw radius at init; r = softplus(raw)")
    attn_impl: AttnImpl = setting(AttnImpl.auto, "NGT's attention backend; auto: triton on CUDA, else compiled")
    head_bias: bool = setting(True, "the output layer's own bias beside its tied weight, as the original's")

    def __post_init__(self) -> None:
        _as_enums(self, "model")
        _at_least(self, "model", 1, "d_model", "n_layers", "n_heads", "coord_dim", "head_coord_dim", "mlp_dim",
                  "context")
        _check(self.d_model % self.n_heads == 0, "model.d_model", self.d_model,
               f"a multiple of model.n_heads={self.n_heads}")
        _check(0 <= self.dropout < 1, "model.dropout", self.dropout, "0 <= dropout < 1")
        _check(math.isfinite(self.radius_init), "model.radius_init", self.radius_init, "a finite number")


@dataclass
class DataConfig:
    """The corpus and its tokenizer (README, 'Data')."""

    name: str = setting("shakespeare", "the corpus's name in reports and cache files")
    source: Source = setting(Source.bundled, "bundled (the plays shipped), text (data.path), hf (a hub dataset), url")
    path: Optional[str] = setting(None, "a .txt file or folder (text), a dataset id or local copy (hf), a URL (url)")
    hf_config: Optional[str] = setting(None, "the hub dataset's config, e.g. wikitext-103-raw-v1")
    sha256: Optional[str] = setting(None, "expected checksum of a downloaded file (url)")
    tokenizer: TokenizerKind = setting(TokenizerKind.char, "char, or bpe (byte-level, trained on the train split)")
    vocab_size: int = setting(8192, "BPE vocabulary size")
    val_fraction: float = setting(0.1, "single-text corpora: the last fraction validates")
    cache_dir: Optional[str] = setting(None, "token and tokenizer cache; default $NGT_CACHE or ~/.cache/ngt")

    def __post_init__(self) -> None:
        _as_enums(self, "data")
        if self.tokenizer == TokenizerKind.bpe:
            _check(MIN_BPE_VOCAB <= self.vocab_size < 2**32, "data.vocab_size", self.vocab_size,
                   f"at least {MIN_BPE_VOCAB} for the byte-level BPE tokenizer")
        _check(0 < self.val_fraction < 1, "data.val_fraction", self.val_fraction, "0 < val_fraction < 1")


@dataclass
class BudgetConfig:
    """How long a run trains, and how often it evaluates and saves."""

    name: str = setting("demo", "the budget's name in reports")
    max_steps: int = setting(300, "optimizer steps; the cosine schedule ends here")
    warmup_steps: int = setting(30, "linear warmup steps")
    eval_every: int = setting(50, "steps between evaluations")
    eval_batches: int = setting(8, "fixed batches per evaluation (of validation and of train)")
    checkpoint_every: int = setting(50, "steps between saves of checkpoints/last.pt")
    throughput_window: list[int] = setting([], "[start, end] steps for steps/s; [] = first evaluation after 0 to the last")
    stop_at: Optional[int] = setting(None, "pause at this step, on the schedule of max_steps (a rung of successive "
                                           "halving); launched again with a later one or none, the run goes on")

    def __post_init__(self) -> None:
        _at_least(self, "budget", 1, "max_steps", "eval_every", "eval_batches", "checkpoint_every")
        _at_least(self, "budget", 0, "warmup_steps")
        w = list(self.throughput_window)
        _check(not w or (len(w) == 2 and 0 <= w[0] < w[1]), "budget.throughput_window", w,
               "[] or [start, end] with 0 <= start < end")
        if self.stop_at is not None:
            _check(self.stop_at >= 1, "budget.stop_at", self.stop_at, "at least 1")


@dataclass
class TrainConfig:
    """The recipe (docs/recipe.md) and where it runs."""

    batch_size: int = setting(16, "sequences per micro-batch")
    block_size: int = setting(128, "tokens per sequence")
    grad_accum: int = setting(1, "micro-batches per optimizer step")
    lr: float = setting(1e-3, "peak learning rate (AdamW), after warmup")
    min_lr: float = setting(0.0, "learning rate at the end of the cosine")
    weight_decay: float = setting(0.01, "AdamW weight decay (torch's default, as the original)")
    beta1: float = setting(0.9, "AdamW beta1")
    beta2: float = setting(0.999, "AdamW beta2")
    grad_clip: float = setting(1.0, "largest gradient norm")
    amp: bool = setting(True, "CUDA: bf16 autocast where supported, else fp16 with a scaler")
    # On CPU the attention backends compile what matters themselves (docs/performance.md).
    compile: Optional[bool] = setting(None, "torch.compile the model; null: on CUDA only")
    compile_mode: Optional[CompileMode] = setting(None, "torch.compile's mode; null: reduce-overhead (CUDA graphs) "
                                                        "on CUDA, default elsewhere")
    deterministic: bool = setting(False, "torch.use_deterministic_algorithms: the same bits on every CUDA run, "
                                         "for some speed")
    device: str = setting("auto", "auto, cpu, cuda or cuda:N")
    threads: int = setting(0, "CPU threads for torch; 0 = torch's default")
    log_every: int = setting(10, "steps between progress lines")
    full_val: bool = setting(True, "one pass over the whole validation split at the end")
    collective_timeout_s: int = setting(600, "data-parallel runs: seconds a process waits for the others at a "
                                             "collective before the run fails (a dead or hung process)")

    def __post_init__(self) -> None:
        _as_enums(self, "train")
        _at_least(self, "train", 1, "batch_size", "block_size", "grad_accum", "log_every")
        _at_least(self, "train", 0, "min_lr", "weight_decay", "threads")
        _check(0 < self.lr < math.inf, "train.lr", self.lr, "greater than 0 and finite")
        _check(self.min_lr <= self.lr, "train.min_lr", self.min_lr, f"at most train.lr={self.lr}")
        _check(self.grad_clip > 0, "train.grad_clip", self.grad_clip, "greater than 0 (the largest gradient norm)")
        _check(self.collective_timeout_s > 0, "train.collective_timeout_s", self.collective_timeout_s, "greater than 0")
        for name in ("beta1", "beta2"):
            _check(0 <= getattr(self, name) < 1, f"train.{name}", getattr(self, name), "0 <= beta < 1")
        _check(bool(DEVICES.fullmatch(self.device)), "train.device", self.device, "auto, cpu, cuda or cuda:N")

    def check_split(self, processes: int, source: str) -> None:
        """Data-parallel: each process trains an equal share of a step's micro-batches."""
        if self.grad_accum % processes:
            raise NGTError(f"train.grad_accum={self.grad_accum} micro-batches cannot be split evenly over "
                           f"{processes} processes ({source}): make train.grad_accum a multiple of it")


@dataclass
class ProbeConfig:
    """Probe words: their last-layer z and mass at every evaluation of an NGT run (ngt/probes.py)."""

    groups: dict[str, list[str]] = field(default_factory=dict, metadata={"help": (
        "group -> words, matched as written; probes=original (the default) or probes=none sets them, "
        "+probes.groups.NAME=[W1,W2] adds a group")})
    occurrences: int = setting(8, "occurrences per word, chosen once from the corpus (validation split first)")

    def __post_init__(self) -> None:
        _at_least(self, "probes", 1, "occurrences")
        group_of: dict[str, str] = {}
        for name, words in self.groups.items():
            _check(re.fullmatch(r"[A-Za-z0-9_.-]+", name) is not None, "probes.groups", name,
                   "a group name of letters, digits, _ . -")
            _check(len(words) > 0, f"probes.groups.{name}", words, "at least one word")
            for w in words:
                _check(w != "" and w == w.strip(), f"probes.groups.{name}", w, "a word without surrounding whitespace")
                _check(group_of.setdefault(w, name) == name, f"probes.groups.{name}", w,
                       f"a word of one group only (it is in {group_of[w]} too)")


@dataclass
class Config:
    variant: VariantConfig = field(default_factory=VariantConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    budget: BudgetConfig = field(default_factory=BudgetConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    probes: ProbeConfig = field(default_factory=ProbeConfig)
    seed: int = setting(42, "model initialisation and dropout (the repulsion samples use seed + 1)")
    data_seed: int = setting(1337, "order of the training batches")
    eval_seed: int = setting(2024, "the fixed evaluation batches, shared by every run of a grid")
    sweep: Optional[str] = setting(None, "the named grid (sweeps/<name>.yaml) the run belongs to")
    force: bool = setting(False, "train again from scratch, discarding what the run directory holds")

    def __post_init__(self) -> None:
        for name in ("seed", "data_seed", "eval_seed"):
            _check(getattr(self, name) >= 0, name, getattr(self, name), "at least 0")
        _check(self.train.block_size <= self.model.context, "train.block_size", self.train.block_size,
               f"at most the model's context (model.context={self.model.context})")


def settings_help(values: Optional[dict[str, Any]] = None) -> str:
    """Every setting with its value (the composed config's, else the default) and its
    description, for ``python -m ngt.screen --help``."""
    values = values or {}
    lines = []
    for top in fields(Config):
        kind = get_type_hints(Config)[top.name]
        if is_dataclass(kind):
            lines.append(f"{top.name}: {kind.__doc__.splitlines()[0]}")
            lines += [_help_line(f"{top.name}.{f.name}", f, get_type_hints(kind)[f.name],
                                 values.get(top.name, {}).get(f.name, MISSING)) for f in fields(kind)]
    lines.append("seeds and the rest:")
    lines += [_help_line(f.name, f, get_type_hints(Config)[f.name], values.get(f.name, MISSING))
              for f in fields(Config) if "help" in f.metadata]
    return "\n".join(lines)


def _help_line(key: str, f: Any, hint: Any, value: Any) -> str:
    kind = next((a for a in get_args(hint) if a is not type(None)), hint)
    choices = f" [{'|'.join(m.value for m in kind)}]" if isinstance(kind, type) and issubclass(kind, Enum) else ""
    if value is MISSING:
        value = plain(f.default) if f.default_factory is MISSING else plain(f.default_factory())
    shown = json.dumps(value) if isinstance(value, (bool, type(None))) else value
    return f"  {key}={shown}{choices}  {f.metadata.get('help', '')}"


def plain(obj: Any) -> Any:
    """A config (or any part of it) as plain dicts, lists, strings and numbers: what JSON,
    YAML and ``torch.load(weights_only=True)`` can hold."""
    if is_dataclass(obj):
        return {f.name: plain(getattr(obj, f.name)) for f in fields(obj)}
    if isinstance(obj, Enum):
        return obj.value
    if isinstance(obj, (list, tuple)):
        return [plain(x) for x in obj]
    return obj


def check_known(tree: Any, schema: type = Config, prefix: str = "") -> None:
    """Refuse a key the schema does not have: Hydra's ``+key=value`` adds one that nothing
    reads, and a run would silently train without the setting its name promises."""
    hints = get_type_hints(schema)
    for key in tree:
        if key not in hints:
            near = difflib.get_close_matches(str(key), list(hints), n=1)
            hint = f": did you mean {prefix}{near[0]}?" if near else ""
            raise NGTError(f"{prefix}{key} is not a setting of ngt{hint} (python -m ngt.screen --help lists them)")
        if is_dataclass(hints[key]) and hasattr(tree[key], "keys"):
            check_known(tree[key], hints[key], f"{prefix}{key}.")


def from_plain(d: dict[str, Any]) -> Config:
    """The inverse of ``plain`` for a whole config, checked as on composition."""
    parts = {"variant": VariantConfig, "model": ModelConfig, "data": DataConfig, "budget": BudgetConfig,
             "train": TrainConfig, "probes": ProbeConfig}
    try:
        return Config(**{k: parts[k](**v) if k in parts else v for k, v in d.items()})
    except TypeError as e:
        raise NGTError(f"a config this version of ngt cannot read ({e})") from None


def differences(old: dict, new: dict, allowed: tuple[str, ...], prefix: str = "") -> list[str]:
    """'key: old -> new' for every setting that differs between two plain configs, but those
    under ``allowed`` (dotted keys)."""
    keys = []
    for k in sorted(set(old) | set(new)):
        path = f"{prefix}{k}"
        if any(path == a or path.startswith(a + ".") for a in allowed):
            continue
        a, b = old.get(k), new.get(k)
        if isinstance(a, dict) and isinstance(b, dict):
            keys += differences(a, b, allowed, path + ".")
        elif a != b:
            keys.append(f"{path}: {a!r} -> {b!r}")
    return keys


def variant_names() -> list[str]:
    """Every variant the suite ships, one per file in conf/variant/: the baseline, the default
    NGT, then its ablations by name."""
    names = sorted(p.stem for p in (CONF / "variant").glob("*.yaml"))
    return sorted(names, key=lambda n: (n != "baseline", n != "ngt_default"))


def register_configs() -> None:
    cs = ConfigStore.instance()
    # Only the root: its typed fields validate whatever each group's YAML merges in.
    cs.store(name="config_schema", node=Config)
    # Named grids live beside conf/ in sweeps/, one file each, selected as sweep=NAME.
    for path in sorted(SWEEPS.glob("*.yaml")):
        cs.store(group="sweep", name=path.stem, node=OmegaConf.load(path), package="_global_")
