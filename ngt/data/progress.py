"""Progress of long preparation steps as plain log lines with rates (no terminal UI).

Sizes are counted in characters and shown as MB: WikiText and the bundled corpus are
(almost) ASCII, so a character is a byte there.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Iterator, Sequence

log = logging.getLogger("ngt.data")


class Progress:
    def __init__(self, what: str, total: int | None = None, enabled: bool = True, every_s: float = 10.0):
        self.what = what
        self.total = total
        self.level = logging.INFO if enabled else logging.DEBUG
        self.every_s = every_s
        self.done = 0
        self.start = self.last = time.perf_counter()

    def track(self, batches: Iterable[Sequence[str]]) -> Iterator[Sequence[str]]:
        """Pass the batches through, counting their size."""
        for batch in batches:
            yield batch
            self.advance(sum(map(len, batch)))

    def advance(self, n: int) -> None:
        self.done += n
        now = time.perf_counter()
        if now - self.last >= self.every_s:
            self.last = now
            share = f" ({100 * self.done / self.total:.0f}%)" if self.total else ""
            log.log(self.level, "%s: %.1f MB%s, %.2f MB/s", self.what, self.done / 1e6, share, self.rate())

    def rate(self) -> float:
        return self.done / 1e6 / max(time.perf_counter() - self.start, 1e-9)

    def finish(self, result: str) -> None:
        elapsed = time.perf_counter() - self.start
        mb = self.done / 1e6
        log.log(self.level, "%s: %.1f MB in %.1f s (%.2f MB/s) -> %s", self.what, mb, elapsed, self.rate(), result)
