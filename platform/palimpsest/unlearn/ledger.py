"""The forget-request ledger: an append-only, fsynced JSON Lines record of every request served.

One line per event. A request is `pending` when its serving starts and `done` (with the
metrics after it and the checkpoint path) or `failed` (with the error) when it ends; a
crash between leaves it `pending`, so the next run serves it again and nothing is lost.

A result is only as good as what produced it, so each record carries two hashes:
- `items_hash`, the content of the forget set: an id means the same items for every
  method and configuration, and a reused id with other items is refused;
- `config_hash`, everything else the result depends on (the method and its resolved
  parameters, the unlearning recipe, the target's recipe, data and ε, the model, the
  evaluation, the requests served before it), with the `config` itself on the record.
Records are keyed by (method, request id, config hash). A request done under the same
configuration is skipped; asked under another one it is refused with the differing fields
named (`Ledger.decide`), unless the job says `ledger_mode: serve_again`, which serves it
and records a new entry beside the old one. Nothing stale is ever reported as new.

Lines are only ever appended; the file and (on its creation) its folder are fsynced after
each one. A last line cut short by a crash is ignored when reading and cut off (fsynced)
before the next append; any other unreadable line is an error (the ledger was edited).
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
MODES = ("refuse", "serve_again")


class LedgerError(ValueError):
    """The ledger refuses a request (a reused id with other items or another configuration) or cannot be read."""


def content_hash(items: Iterable) -> str:
    """sha256 of a forget set's items as a set: order does not matter, content does.

    Items are mappings or objects with `question` and `answer` (QAExample, TOFU records).
    """
    lines = sorted(json.dumps({"question": _field(item, "question"), "answer": _field(item, "answer")},
                              sort_keys=True, ensure_ascii=False) for item in items)
    return "sha256:" + hashlib.sha256("\n".join(lines).encode("utf-8")).hexdigest()


def config_hash(config: dict) -> str:
    """sha256 of a request's configuration (canonical JSON: key order does not matter)."""
    text = json.dumps(config, sort_keys=True, ensure_ascii=False, default=str)
    return "sha256:" + hashlib.sha256(text.encode("utf-8")).hexdigest()


def config_differences(recorded: dict | None, asked: dict) -> list[str]:
    """'field: recorded → asked' for each dotted field whose value differs (lists compared whole)."""
    if recorded is None:
        return ["(the record predates configuration hashes)"]
    old, new = _flatten(recorded), _flatten(asked)
    return [f"{key}: {_short(old.get(key, '—'))} → {_short(new.get(key, '—'))}"
            for key in sorted(old.keys() | new.keys()) if old.get(key, _MISSING) != new.get(key, _MISSING)]


_MISSING = object()


def _flatten(value, prefix: str = "") -> dict:
    if isinstance(value, dict) and value:
        flat = {}
        for key, item in value.items():
            flat.update(_flatten(item, f"{prefix}.{key}" if prefix else str(key)))
        return flat
    return {prefix: value}


def _short(value) -> str:
    text = json.dumps(value, ensure_ascii=False, default=str)
    return text if len(text) <= 60 else text[:57] + "…"


def _field(item, name: str) -> str:
    return item[name] if isinstance(item, dict) else getattr(item, name)


@dataclass(frozen=True)
class Decision:
    """What to do with a request: `serve` it (new, pending from a crash, failed before, or served again under
    another configuration) or `skip` it (done under this configuration)."""

    action: str
    record: dict | None  # the request's latest record under this configuration, if any


class Ledger:
    def __init__(self, path: str | Path):
        self.path = Path(path)

    # ----------------------------------------------------------------- reading

    def events(self) -> list[dict]:
        """Every record, oldest first (a torn last line from a crash is left out)."""
        if not self.path.exists():
            return []
        data = self.path.read_bytes()
        lines = data.decode("utf-8", errors="replace").split("\n")
        events = []
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            try:
                events.append(json.loads(line))
            except json.JSONDecodeError:
                if number == len(lines) and not data.endswith(b"\n"):
                    break  # the append a crash cut short: it never happened
                raise LedgerError(f"{self.path}: line {number} is not a ledger record (edited by hand?)") from None
        return events

    def state(self) -> dict[tuple[str, str, str | None], dict]:
        """Each (method, request id, config hash)'s latest record, in the order they first appeared."""
        latest: dict[tuple[str, str, str | None], dict] = {}
        for event in self.events():
            latest[(event["method"], event["id"], event.get("config_hash"))] = event
        return latest

    def latest(self, method: str, request_id: str, digest: str) -> dict | None:
        """The latest record of `method` serving `request_id` under the configuration hashing to `digest`."""
        return self.state().get((method, request_id, digest))

    # ----------------------------------------------------------------- writing

    def decide(self, request_id: str, items_hash: str, method: str, config: dict, *, mode: str = "refuse") -> Decision:
        """Whether `method` should serve `request_id` (items hashing to `items_hash`, under `config`) or skip it.

        Raises:
            LedgerError: the id was recorded (by any method) with other items, or (mode `refuse`) by this
                method under another configuration: the message names the differing fields.
        """
        if mode not in MODES:
            raise LedgerError(f"ledger_mode must be one of {', '.join(MODES)}, got {mode!r}")
        state = self.state()
        for (_, known_id, _), record in state.items():
            if known_id == request_id and record["items_hash"] != items_hash:
                raise LedgerError(f"request {request_id!r}: the ledger {self.path} recorded it with other items "
                                  f"({record['items_hash'][:19]}…, status {record['status']}); give a new id for "
                                  "a new forget set")
        digest = config_hash(config)
        record = state.get((method, request_id, digest))
        if record is not None:
            return Decision("skip" if record["status"] == "done" else "serve", record)
        others = [r for (m, i, h), r in state.items() if m == method and i == request_id and h != digest]
        if others and mode == "refuse":
            other = others[-1]
            changed = config_differences(other.get("config"), config)
            raise LedgerError(
                f"request {request_id!r} by {method}: the ledger {self.path} has it {other['status']} under another "
                f"configuration ({'; '.join(changed[:6])}{'; …' if len(changed) > 6 else ''}); its result would not "
                "be this job's. Give a new request id, another ledger, or ledger_mode: serve_again to record a new "
                "entry")
        return Decision("serve", None)

    def begin(self, request_id: str, items_hash: str, *, method: str, config: dict, epsilon: float | None,
              items: int) -> dict:
        """Record that `method` starts serving `request_id` under `config` (status pending)."""
        return self._append({"id": request_id, "items_hash": items_hash, "items": items, "method": method,
                             "config_hash": config_hash(config), "epsilon": epsilon, "status": "pending",
                             "config": config})

    def finish(self, request_id: str, method: str, digest: str, *, metrics: dict, checkpoint: str | None) -> dict:
        return self._append({**self._pending(request_id, method, digest), "status": "done", "metrics": metrics,
                             "checkpoint": checkpoint})

    def fail(self, request_id: str, method: str, digest: str, error: str) -> dict:
        return self._append({**self._pending(request_id, method, digest), "status": "failed", "error": error})

    def pending(self) -> list[dict]:
        """Records still pending (being served, or cut off by a crash)."""
        return [record for record in self.state().values() if record["status"] == "pending"]

    def _pending(self, request_id: str, method: str, digest: str) -> dict:
        record = self.latest(method, request_id, digest)
        if record is None or record["status"] != "pending":
            raise LedgerError(f"request {request_id!r} of {method} is not pending in {self.path}")
        return {key: record[key] for key in ("id", "items_hash", "items", "method", "config_hash", "epsilon", "config")
                if key in record}

    def _append(self, record: dict) -> dict:
        if record["status"] not in STATUSES:
            raise LedgerError(f"status must be one of {', '.join(STATUSES)}")
        record = {**record, "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        created = not self.path.exists()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if not created:
            self._repair_tail()
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

    def _repair_tail(self) -> None:
        """End the file with a complete line before appending: a torn last line is cut off, fsynced.

        A last line that is a whole record without its newline (the crash hit between the two)
        gets the newline instead, so what `events` read stays what it reads.
        """
        with open(self.path, "rb+") as handle:
            size = handle.seek(0, os.SEEK_END)
            if size == 0:
                return
            handle.seek(size - 1)
            if handle.read(1) == b"\n":
                return
            handle.seek(0)
            data = handle.read()
            start = data.rfind(b"\n") + 1
            try:
                json.loads(data[start:])
                handle.seek(size)
                handle.write(b"\n")
            except (json.JSONDecodeError, UnicodeDecodeError):
                handle.truncate(start)
            handle.flush()
            os.fsync(handle.fileno())
