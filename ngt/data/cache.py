"""The on-disk cache shared by every run: token arrays, tokenizers, downloads.

Many processes (a sweep's jobs, a test and its subprocesses) may want the same entry
at once. Each entry is built by one of them under an exclusive ``flock`` while the
others wait, written to a temporary file, fsynced and renamed into place, so a
reader sees a complete file or none. Every read checks the entry cheaply and treats
a bad one (truncated, its meta missing or disagreeing) as absent, so it is rebuilt.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO, TypeVar

import numpy as np

from ngt.errors import NGTError

log = logging.getLogger(__name__)

T = TypeVar("T")
FORMAT = 1  # bump when the layout of any cached entry changes
MISSING = "missing"


class StaleEntry(Exception):
    """A cache entry that is absent or fails its check; the message says which."""


def cache_root(configured: str | None) -> Path:
    return Path(configured or os.environ.get("NGT_CACHE") or "~/.cache/ngt").expanduser()


def fingerprint(*parts: object) -> str:
    """A short stable hash of JSON-able parts, for file names."""
    blob = json.dumps([FORMAT, *parts], sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


@contextmanager
def locked(path: Path) -> Iterator[None]:
    """Hold the exclusive lock that guards the entry at ``path`` (blocking)."""
    lock = path.with_name(path.name + ".lock")
    try:
        lock.parent.mkdir(parents=True, exist_ok=True)
        lock.touch()
    except OSError as exc:
        raise NGTError(
            f"cannot write to the cache directory {path.parent} ({exc.strerror}); "
            "set data.cache_dir or NGT_CACHE to a writable folder"
        ) from None
    with open(lock, "a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX)
        except OSError as exc:  # e.g. a network file system mounted without lock support
            raise NGTError(
                f"cannot lock {lock} ({exc.strerror}); set data.cache_dir or NGT_CACHE to a folder "
                "on a file system with file locks"
            ) from None
        yield


def ensure(path: Path, load: Callable[[], T], build: Callable[[], None]) -> T:
    """The entry at ``path``: loaded if valid, else built once (by whichever process locks first)."""
    try:
        return load()
    except StaleEntry:
        pass
    with locked(path):
        try:
            return load()  # another process may have built it while we waited
        except StaleEntry as exc:
            if str(exc) != MISSING:
                log.warning("cache entry %s is unusable (%s); rebuilding it", path, exc)
        build()
        return load()


@contextmanager
def atomic_file(path: Path) -> Iterator[BinaryIO]:
    """A file that appears at ``path`` complete and durable, or not at all.

    Only called under its entry's lock, so any other temporary file of this name is a
    leftover of a writer that died, and is removed.
    """
    for stale in path.parent.glob(path.name + ".tmp-*"):
        stale.unlink(missing_ok=True)
    tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def write_json(path: Path, obj: object) -> None:
    with atomic_file(path) as f:
        f.write(json.dumps(obj, indent=1).encode())


_BLOCK = 1 << 16
_SAMPLES = 16


def sampled_checksum(path: Path) -> str:
    """Hash of the size and of 16 evenly spaced 64 KiB blocks (the whole file when small).

    Reads at most 1 MiB, so checking even WikiText-103's train tokens costs milliseconds.
    Truncation is caught by the size, damage within the sampled blocks by the hash; damage
    elsewhere is not (a full hash would read every token on every load).
    """
    size = path.stat().st_size
    h = hashlib.blake2b(str(size).encode(), digest_size=16)
    with open(path, "rb") as f:
        if size <= _BLOCK * _SAMPLES:
            h.update(f.read())
        else:
            for k in range(_SAMPLES):
                f.seek((size - _BLOCK) * k // (_SAMPLES - 1))
                h.update(f.read(_BLOCK))
    return h.hexdigest()


def _meta_path(path: Path) -> Path:
    return path.with_suffix(".json")


def write_tokens(path: Path, chunks: Iterable[np.ndarray], dtype: np.dtype, key: str, info: dict) -> int:
    """Store a token array (``path``, raw ids) and its meta (``path`` with .json); returns its length.

    ``chunks`` must hold at least one token. ``key`` is what a reader must match; ``info``
    is recorded for people reading the cache.
    """
    length = 0
    with atomic_file(path) as f:
        for chunk in chunks:
            f.write(np.ascontiguousarray(chunk, dtype=dtype).tobytes())
            length += len(chunk)
    meta = {"format": FORMAT, "key": key, "dtype": dtype.name, "length": length, "checksum": sampled_checksum(path)}
    write_json(_meta_path(path), {**meta, **info})
    return length


def open_tokens(path: Path, key: str, dtype: np.dtype) -> np.memmap:
    """The stored array, memory-mapped read-only; ``StaleEntry`` when absent or damaged."""
    try:
        meta = json.loads(_meta_path(path).read_text())
        size = path.stat().st_size
    except FileNotFoundError:
        raise StaleEntry(MISSING) from None
    except ValueError:
        raise StaleEntry("meta is not valid JSON") from None
    expected = {"format": FORMAT, "key": key, "dtype": dtype.name}
    if any(meta.get(k) != v for k, v in expected.items()):
        raise StaleEntry("meta belongs to other data")
    length = meta.get("length")
    if not isinstance(length, int) or length <= 0 or size != length * dtype.itemsize:
        raise StaleEntry(f"size {size} bytes does not match {length} tokens of {dtype.name}")
    if sampled_checksum(path) != meta.get("checksum"):
        raise StaleEntry("checksum mismatch")
    return np.memmap(path, dtype=dtype, mode="r", shape=(length,))
