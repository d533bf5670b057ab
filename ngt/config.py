"""The configuration tree: typed dataclasses registered in Hydra's ConfigStore.

Every YAML file under ``conf/`` merges into one of these nodes, so a misspelt key
or a value of the wrong type fails at composition time instead of mid-run.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from hydra.core.config_store import ConfigStore
from omegaconf import OmegaConf

SWEEPS = Path(__file__).resolve().parents[1] / "sweeps"


@dataclass
class VariantConfig:
    """Which attention and which NGT switches (SPEC: 'Variants screened')."""

    name: str = "ngt_default"
    arch: str = "ngt"  # ngt | baseline
    mass: str = "scores"  # scores: score *= m_i m_j; value: V_j *= m_j
    radius: str = "hard"  # hard | soft | none
    use_rsqrt: bool = True
    repulsion_weight: float = 0.05
    repulsion_interval: int = 1  # optimizer steps between repulsion terms; 0 = off
    repulsion_samples: int = 64


@dataclass
class ModelConfig:
    name: str = "tiny"
    d_model: int = 128
    n_layers: int = 4
    n_heads: int = 4
    coord_dim: int = 32  # c: width of the geometric stream
    head_coord_dim: int = 16  # ch: coordinates per head
    mlp_dim: int = 512  # NGT's FFN width; the baseline's is derived to match params
    context: int = 256  # max sequence length (learned positions)
    dropout: float = 0.1
    init: str = "gpt2"  # gpt2 | torch_default (the original's, first loss ~200+)
    radius_init: float = 4.0  # raw value; r = softplus(radius_raw)
    attn_impl: str = "auto"  # auto | reference | compiled | triton (CUDA); see ngt.model.gravity.resolve_backend


@dataclass
class DataConfig:
    name: str = "shakespeare"
    source: str = "bundled"  # bundled | text | hf | url
    path: Optional[str] = None  # file/folder (text), dataset path (hf), url (url)
    hf_config: Optional[str] = None  # e.g. wikitext-103-raw-v1
    sha256: Optional[str] = None  # expected checksum of a downloaded file (url)
    tokenizer: str = "char"  # char | bpe
    vocab_size: int = 8192  # bpe only
    val_fraction: float = 0.1  # single-text sources: last fraction is validation
    cache_dir: Optional[str] = None  # default: $NGT_CACHE or ~/.cache/ngt


@dataclass
class BudgetConfig:
    name: str = "demo"
    max_steps: int = 300
    warmup_steps: int = 30
    eval_every: int = 50
    eval_batches: int = 8
    checkpoint_every: int = 50
    throughput_window: list[int] = field(default_factory=list)  # [start, end] steps; [] = first..last eval


@dataclass
class TrainConfig:
    batch_size: int = 16
    block_size: int = 128
    grad_accum: int = 1
    lr: float = 1e-3
    min_lr: float = 0.0
    weight_decay: float = 0.01  # torch's AdamW default, as in the original
    beta1: float = 0.9
    beta2: float = 0.999
    grad_clip: float = 1.0
    amp: bool = True  # CUDA only: bf16 where supported, else fp16 with a scaler
    # torch.compile the model for training; null (the default): on CUDA, off on CPU. On an
    # H100 it took w3_25m's steps from 18.3 to 14.0 ms (baseline) and 31.6 to 19.0 ms (NGT):
    # eager steps there are bound by launching kernels from Python. On CPU the attention
    # backends compile what matters themselves, and compiling the rest costs more than it saves.
    compile: Optional[bool] = None
    # torch.compile's mode: default | reduce-overhead (CUDA graphs: no per-kernel launch cost
    # from Python) | max-autotune | max-autotune-no-cudagraphs; null (the default):
    # reduce-overhead on CUDA, default elsewhere. Compiled w3_25m steps on an H200 were bound
    # by launching kernels (the device busy 11 of 27 ms, baseline; 11 of 39 ms, NGT); CUDA
    # graphs took them to 14.9 and 17.7 ms.
    compile_mode: Optional[str] = None
    # torch.use_deterministic_algorithms for the run: on CUDA the same bits on every run,
    # wherever torch has a deterministic kernel (it warns naming any op without one), for
    # some speed: NGT's Triton backward then takes two passes instead of one that sums by
    # atomic adds. CPU runs repeat bit for bit either way.
    deterministic: bool = False
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    threads: int = 0  # CPU threads for torch; 0 = torch's default
    log_every: int = 10  # progress line every N steps
    full_val: bool = True  # one non-overlapping pass over validation at the end


@dataclass
class Config:
    variant: VariantConfig = field(default_factory=VariantConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    budget: BudgetConfig = field(default_factory=BudgetConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    seed: int = 42  # model init and dropout
    data_seed: int = 1337  # order of training batches
    eval_seed: int = 2024  # the fixed evaluation batches, shared by every run of a sweep
    sweep: Optional[str] = None  # name of the named grid (sweeps/<name>.yaml) this run belongs to


def register_configs() -> None:
    cs = ConfigStore.instance()
    # Only the root: its typed fields validate whatever each group's YAML merges in.
    cs.store(name="config_schema", node=Config)
    # Named grids live beside conf/ in sweeps/, one file each, selected as sweep=NAME.
    for path in sorted(SWEEPS.glob("*.yaml")):
        cs.store(group="sweep", name=path.stem, node=OmegaConf.load(path), package="_global_")
