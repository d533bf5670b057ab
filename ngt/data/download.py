"""Corpora fetched from a URL once, checked against their sha256, and kept in the cache."""

from __future__ import annotations

import logging
import shutil
import urllib.error
import urllib.request
from pathlib import Path, PurePosixPath
from urllib.parse import urlparse

from ngt.data.cache import MISSING, StaleEntry, atomic_file, ensure, fingerprint
from ngt.data.corpus import file_sha256
from ngt.errors import NGTError

log = logging.getLogger(__name__)

TIMEOUT_S = 30


def fetch(url: str, sha256: str | None, folder: Path) -> Path:
    """The local copy of ``url``; downloaded only when absent (or not matching ``sha256``)."""
    name = PurePosixPath(urlparse(url).path).name or "download"
    path = folder / f"{fingerprint(url)}-{name}"

    def load() -> Path:
        if not path.is_file():
            raise StaleEntry(MISSING)
        if sha256 and file_sha256(path) != sha256:
            raise StaleEntry("sha256 mismatch")
        return path

    def build() -> None:
        log.info("downloading %s", url)
        with atomic_file(path) as f:
            try:
                with urllib.request.urlopen(url, timeout=TIMEOUT_S) as response:
                    shutil.copyfileobj(response, f)
            except ValueError as exc:
                raise NGTError(f"data.path={url!r} is not a URL that can be downloaded ({exc})") from None
            except (urllib.error.URLError, TimeoutError, ConnectionError) as exc:
                raise NGTError(
                    f"cannot download {url} ({getattr(exc, 'reason', exc)}): offline or unreachable; "
                    "use a local copy instead: data=text data.path=/path/to/file.txt"
                ) from None
            f.flush()
            if sha256 and (actual := file_sha256(Path(f.name))) != sha256:
                raise NGTError(f"download of {url} has sha256 {actual}, expected {sha256} (data.sha256)")

    return ensure(path, load, build)
