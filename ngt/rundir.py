"""The run directory: the contract between a run and every tool that reads it
(docs/run-directory.md).

    metrics.jsonl         one JSON object per evaluation
    summary.json          ngt.records.RunSummary: status, seeds, params, losses, throughput
    checkpoints/last.pt   ngt.records.Checkpoint, every checkpoint_every steps and at the end
    checkpoints/best.pt   the same at the best validation loss
    tb/                   TensorBoard scalars, hparams and the projector of z
    .hydra/, run.log      Hydra's record of the config and the run's log
"""

from __future__ import annotations

import json
import os
import shutil
import socket
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterable, Iterator, Optional

from filelock import FileLock, Timeout

from ngt.atomic import atomic_write_bytes, naming_the_file
from ngt.errors import NGTError
from ngt.records import Checkpoint, RunSummary, finite_or_none

SUMMARY = "summary.json"
METRICS = "metrics.jsonl"
LOCK = ".lock"  # held by the process training the run; the OS releases it when that process dies
RECORD = ("config.yaml", "overrides.yaml")  # the .hydra/ files that say what a run is (report, continue=)
OWNER = ".lock.owner"  # who holds it, for the message of a launch that finds it taken


class RunBusy(NGTError):
    """Another process is training this run directory (with ``config``, and its ``.hydra/``
    ``record``, where it said)."""

    def __init__(self, message: str, config: Optional[dict[str, Any]], record: dict[str, str]):
        super().__init__(message)
        self.config, self.record = config, record


@dataclass(frozen=True)
class RunDir:
    path: Path

    @property
    def last(self) -> Path:
        return self.path / "checkpoints" / "last.pt"

    @property
    def best(self) -> Path:
        return self.path / "checkpoints" / "best.pt"

    @property
    def metrics(self) -> Path:
        return self.path / METRICS

    @property
    def summary(self) -> Path:
        return self.path / SUMMARY

    @property
    def tb(self) -> Path:
        return self.path / "tb"

    @contextmanager
    def lock(self, config: dict[str, Any], record: dict[str, str]) -> Iterator[None]:
        """Hold the run directory for this process while the block runs; raises RunBusy,
        naming the holder, its config and its ``.hydra/`` record, where another process
        holds it. Hydra writes ``.hydra/`` before the run is reached, so a launch that finds
        the run busy has replaced the holder's record, and puts it back (``put_back_record``)."""
        self.path.mkdir(parents=True, exist_ok=True)
        lock = FileLock(self.path / LOCK, timeout=0)
        try:
            lock.acquire()
        except Timeout:
            holder, its_config, its_record = self._owner()
            raise RunBusy(f"{self.path} is being trained by {holder}", its_config, its_record) from None
        try:
            since = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
            who = f"pid {os.getpid()} on {socket.gethostname()} since {since}"
            text = json.dumps({"holder": who, "config": config, "record": record})
            atomic_write_bytes(self.path / OWNER, lambda f: f.write(text.encode()))
            yield
        finally:
            lock.release()

    def _owner(self) -> tuple[str, Optional[dict[str, Any]], dict[str, str]]:
        try:
            owner = json.loads((self.path / OWNER).read_text())
            record = owner.get("record") or {}
            return str(owner["holder"]), owner.get("config"), {k: str(v) for k, v in record.items() if k in RECORD}
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            return "another process", None, {}

    def put_back_record(self, record: dict[str, str]) -> None:
        """Write the holder's ``.hydra/`` files (as its launch made them) where another
        launch's Hydra wrote its own."""
        for name, text in record.items():
            path = self.path / ".hydra" / name
            atomic_write_bytes(path, lambda f, data=text.encode(): f.write(data))

    def remove_leftovers(self) -> None:
        """Temporary files of writes a kill interrupted (ngt.atomic): only their process
        could have finished them, and it is gone (the caller holds the lock)."""
        for folder in (self.path, self.path / "checkpoints"):
            for tmp in folder.glob(".*.tmp*"):
                tmp.unlink(missing_ok=True)

    def clear(self) -> None:
        """Remove what training wrote (``force=true``); Hydra's records and the log stay."""
        for f in (self.summary, self.metrics, self.path / "probes.jsonl", self.path / "traceback.txt"):
            f.unlink(missing_ok=True)
        for folder in (self.path / "checkpoints", self.tb):
            shutil.rmtree(folder, ignore_errors=True)

    def read_metrics(self) -> list[dict[str, Any]]:
        """Every evaluation row. A last line without its newline that does not parse is the
        row a crash cut mid-append, and is left out (the trainer writes it again); any other
        line that does not parse raises NGTError naming it, and the file is not touched."""
        try:
            text = self.metrics.read_text()
        except FileNotFoundError:
            return []
        except ValueError as e:  # not UTF-8
            raise NGTError(f"{self.metrics} is damaged ({e})") from None
        lines = text.split("\n")  # the last item is "" when the file ends with a newline
        rows = []
        for number, line in enumerate(lines, 1):
            row = _row(line) if line else {}
            if row is None:
                if number == len(lines):  # torn: the append never reached its newline
                    break
                raise NGTError(f"{self.metrics}, line {number}: not a metrics row ({line[:40]!r}); "
                               "the file was left as it is: repair or remove that line")
            if row:
                rows.append(row)
        return rows

    def rewrite_metrics(self, rows: Iterable[dict[str, Any]]) -> None:
        """Replace metrics.jsonl atomically (used on resume to drop evaluations past
        the checkpoint, which the resumed run will produce again)."""
        text = "".join(json.dumps(r) + "\n" for r in rows)
        atomic_write_bytes(self.metrics, lambda f: f.write(text.encode()))

    def append_metrics(self, row: dict[str, Any]) -> None:
        """One row, on disk before the checkpoint of its step is written."""
        with naming_the_file(self.metrics), open(self.metrics, "a") as f:
            f.write(json.dumps({k: finite_or_none(v) if isinstance(v, float) else v for k, v in row.items()}) + "\n")
            f.flush()
            os.fsync(f.fileno())

    def read_summary(self) -> Optional[RunSummary]:
        """The run's summary; None when it has none yet. A damaged one raises NGTError."""
        try:
            text = self.summary.read_text()
            return RunSummary.from_dict(json.loads(text))
        except FileNotFoundError:
            return None
        except (ValueError, AttributeError, TypeError, NGTError) as e:  # bad JSON or UTF-8, not a summary
            raise NGTError(f"{self.summary} is damaged ({str(e).splitlines()[0][:120]})") from None

    def checkpoint_to_go_on(self, summary: Optional[RunSummary]) -> Optional[Checkpoint]:
        """``last.pt``, checked (digest, safe load), for a run that goes on from it; None for
        one with nothing trained yet. A run past step 0 without it is refused."""
        from ngt.checkpoint import load_checkpoint  # torch: only where a run goes on

        if not self.last.exists():
            if summary is not None and summary.final_step > 0:
                raise NGTError(f"{self.path} stands at step {summary.final_step} but has no {self.last.name} to go "
                               "on from; force=true trains it again from the start")
            return None
        return load_checkpoint(self.last)

    def recorded_config(self, summary: RunSummary) -> dict[str, Any]:
        """The config the run was trained with: its summary's, or (a summary from before
        summaries held it) its checkpoint's."""
        if summary.config is not None:
            return summary.config
        ckpt = self.checkpoint_to_go_on(summary)
        if ckpt is None:
            raise NGTError(f"{self.summary} records no config and the run has no checkpoint to read it from: "
                           "force=true trains it again")
        return ckpt.config

    def write_summary(self, summary: RunSummary) -> None:
        text = json.dumps(summary.to_dict(), indent=2) + "\n"
        atomic_write_bytes(self.summary, lambda f: f.write(text.encode()))


def _row(line: str) -> Optional[dict[str, Any]]:
    """A metrics row, or None if the line is not one."""
    try:
        row = json.loads(line)
    except ValueError:
        return None
    return row if isinstance(row, dict) and isinstance(row.get("step"), int) else None
