"""The forget-request ledger: an append-only, fsynced JSON Lines record of every request served.

One line per event. A request is `pending` when its serving starts and `done` (with the
metrics after it and the checkpoint path) or `failed` (with the error) when it ends; a
crash between leaves it `pending`, so the next run serves it again and nothing is lost.
Each request carries the content hash of its items: a request id that is done is skipped
when asked again with the same items and refused with other items, so no request is
applied twice or silently replaced. A job comparing methods serves every request once per
method, each on its own copy of the target: records are keyed by (method, request id), and
an id means the same items whatever the method. Lines are only ever appended; the file and (on its
creation) its folder are fsynced after each one. A last line cut short by a crash is
ignored when reading; any other unreadable line is an error (the ledger was edited).
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

STATUSES = ("pending", "done", "failed")


class LedgerError(ValueError):
    """The ledger refuses a request (a reused id with other items) or cannot be read."""


def content_hash(items: Iterable) -> str:
    """sha256 of a forget set's items as a set: order does not matter, content does.

    Items are mappings or objects with `question` and `answer` (QAExample, TOFU records).
    """
    lines = sorted(json.dumps({"question": _field(item, "question"), "answer": _field(item, "answer")},
                              sort_keys=True, ensure_ascii=False) for item in items)
    return "sha256:" + hashlib.sha256("\n".join(lines).encode("utf-8")).hexdigest()


def _field(item, name: str) -> str:
    return item[name] if isinstance(item, dict) else getattr(item, name)


@dataclass(frozen=True)
class Decision:
    """What to do with a request: `serve` it (new, pending from a crash, or failed before) or `skip` it (done)."""

    action: str
    record: dict | None  # the request's latest record, if any


class Ledger:
    def __init__(self, path: str | Path):
        self.path = Path(path)

    # ----------------------------------------------------------------- reading

    def events(self) -> list[dict]:
        """Every record, oldest first (a torn last line from a crash is left out)."""
        if not self.path.exists():
            return []
        lines = self.path.read_text(encoding="utf-8").split("\n")
        events = []
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            try:
                events.append(json.loads(line))
            except json.JSONDecodeError:
                if number == len(lines) and not self.path.read_bytes().endswith(b"\n"):
                    break  # the append a crash cut short: it never happened
                raise LedgerError(f"{self.path}: line {number} is not a ledger record (edited by hand?)") from None
        return events

    def state(self) -> dict[tuple[str, str], dict]:
        """Each (method, request id)'s latest record, in the order they first appeared."""
        latest: dict[tuple[str, str], dict] = {}
        for event in self.events():
            latest[(event["method"], event["id"])] = event
        return latest

    # ----------------------------------------------------------------- writing

    def decide(self, request_id: str, items_hash: str, method: str) -> Decision:
        """Whether `method` should serve `request_id` (items hashing to `items_hash`) or skip it.

        Raises:
            LedgerError: the id was recorded (by any method) with other items.
        """
        state = self.state()
        for (_, known_id), record in state.items():
            if known_id == request_id and record["items_hash"] != items_hash:
                raise LedgerError(f"request {request_id!r}: the ledger {self.path} recorded it with other items "
                                  f"({record['items_hash'][:19]}…, status {record['status']}); give a new id for "
                                  "a new forget set")
        record = state.get((method, request_id))
        if record is not None and record["status"] == "done":
            return Decision("skip", record)
        return Decision("serve", record)

    def begin(self, request_id: str, items_hash: str, *, method: str, epsilon: float | None, items: int) -> dict:
        """Record that `method` starts serving `request_id` (status pending)."""
        return self._append({"id": request_id, "items_hash": items_hash, "items": items, "method": method,
                             "epsilon": epsilon, "status": "pending"})

    def finish(self, request_id: str, method: str, *, metrics: dict, checkpoint: str | None) -> dict:
        return self._append({**self._last(request_id, method), "status": "done", "metrics": metrics,
                             "checkpoint": checkpoint})

    def fail(self, request_id: str, method: str, error: str) -> dict:
        return self._append({**self._last(request_id, method), "status": "failed", "error": error})

    def _last(self, request_id: str, method: str) -> dict:
        record = self.state().get((method, request_id))
        if record is None or record["status"] != "pending":
            raise LedgerError(f"request {request_id!r} of {method} is not pending in {self.path}")
        return {key: record[key] for key in ("id", "items_hash", "items", "method", "epsilon")}

    def _append(self, record: dict) -> dict:
        if record["status"] not in STATUSES:
            raise LedgerError(f"status must be one of {', '.join(STATUSES)}")
        record = {**record, "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        created = not self.path.exists()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(record, ensure_ascii=False, default=str) + "\n")
            handle.flush()
            os.fsync(handle.fileno())
        if created:  # the new file's name must survive a crash too
            directory = os.open(self.path.parent, os.O_RDONLY)
            try:
                os.fsync(directory)
            finally:
                os.close(directory)
        return record
