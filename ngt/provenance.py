"""Which code made a run: ngt's version and git commit (and whether the tree had changes
not committed), and the versions of the libraries that shape its numbers."""

from __future__ import annotations

import functools
import platform
import subprocess
from dataclasses import asdict, dataclass
from importlib import metadata
from pathlib import Path
from typing import Any, Optional

PACKAGE = Path(__file__).resolve().parent
LIBRARIES = ("torch", "triton", "hydra-core", "omegaconf", "tokenizers", "datasets", "numpy")


@dataclass(frozen=True)
class CodeVersion:
    ngt: str
    git_commit: Optional[str]  # None where ngt is not run from a git checkout (an installed wheel)
    git_dirty: Optional[bool]
    python: str
    libraries: dict[str, str]

    def short(self) -> str:
        """'ngt 0.1.0 @ 1a2b3c4d (with changes)', as a log line or a report's title shows it."""
        where = f" @ {self.git_commit[:8]}" if self.git_commit else ""
        return f"ngt {self.ngt}{where}{' (with changes)' if self.git_dirty else ''}"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> CodeVersion:
        return cls(**{k: d.get(k) for k in ("ngt", "git_commit", "git_dirty", "python", "libraries")})


def _git(*args: str) -> Optional[str]:
    try:
        done = subprocess.run(["git", "-C", str(PACKAGE), *args], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout if done.returncode == 0 else None


def _version(dist: str) -> Optional[str]:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


@functools.cache
def code_version() -> CodeVersion:
    """This process's code, read once."""
    commit = _git("rev-parse", "HEAD")
    status = _git("status", "--porcelain", "--untracked-files=no", "--", ".") if commit else None
    libraries = {name: v for name in LIBRARIES if (v := _version(name))}
    return CodeVersion(ngt=_version("ngt") or "unknown", git_commit=commit.strip() if commit else None,
                       git_dirty=bool(status.strip()) if status is not None else None,
                       python=platform.python_version(), libraries=libraries)
