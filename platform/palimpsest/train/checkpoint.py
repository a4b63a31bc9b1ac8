"""What a checkpoint holds and how the loop writes and reads it.

A checkpoint directory is a transformers model (`save_pretrained`, loadable anywhere),
the prompt format the model was trained on, and `trainer_state.pt`: where the run is
(method, task, step), the weights as the loop holds them, optimizer and schedule, the
method's state, what the backend carries across tasks, the results so far and, for a
private run, its secret (what its noise and batches derive from). The trainer state is
written owner-only (0600): it is the one place that secret lives. Every
rank calls `save_checkpoint` (ZeRO-3 gathers the weights collectively); rank 0 writes.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from palimpsest.models import build_model, export_pretrained, unwrap
from palimpsest.manifest import STATE_FILE
from palimpsest.train.batching import PROMPT_TEMPLATE

PROMPT_FILE = "palimpsest_prompt.json"  # how to ask the model: the format it was trained on
POSITION_FILE = "checkpoint_position.json"  # what the checkpoint was reported with (method, task, step)


@dataclass
class MethodResult:
    """One method's results over the stream (what its runner summarises)."""

    name: str
    records: list[dict] = field(default_factory=list)  # metrics.jsonl rows
    task_end: list[dict] = field(default_factory=list)  # per task: eval set -> metrics
    task_end_steps: list[int] = field(default_factory=list)
    train_tokens: int = 0
    wall_s: float = 0.0  # training (model set-up and steps), summed over attempts (a resume adds to it)
    eval_wall_s: float = 0.0  # evaluation, kept out of wall_s: a method's cost is what it trains
    parameters: dict | None = None
    privacy: dict | None = None  # a private run: ε spent, δ, σ, sample rate, steps (see privacy.PrivacyPlan)
    precision: str | None = None  # what the forward ran at (training.precision resolved on the device)
    steps: int = 0  # optimizer steps per task
    task_tokens: list[int] = field(default_factory=list)  # per finished task: its training tokens
    task_wall_s: list[float] = field(default_factory=list)  # per finished task: its training wall time
    # Steady state, for throughput: each task's steps after its first STEADY_SKIP (warm-up), without evaluation.
    steady_steps: int = 0
    steady_tokens: int = 0
    steady_wall_s: float = 0.0
    # FLOPs of every model call the method made (`train.flops`): this rank's running total, the part
    # of it already closed into tasks, and per finished task the sum over every rank.
    flops_local: float = 0.0
    flops_local_closed: float = 0.0
    task_flops: list[float] = field(default_factory=list)


@dataclass
class Position:
    """Where a checkpoint was taken: `step` steps into task `task` of method `method`.

    step 0 at task t means task t has not started (tasks 0..t-1 are done); task == number
    of tasks means the method is finished.
    """

    method: int
    task: int
    step: int


def prompt_format(eos_token_id: int | None) -> dict:
    return {"prompt_template": PROMPT_TEMPLATE, "answer_prefix": " ", "answer_ends_with_eos": True,
            "eos_token_id": eos_token_id,
            "note": "the model was trained to answer prompt_template.format(question=...) with answer_prefix + "
                    "answer + eos; other prompt formats are out of distribution"}


def save_checkpoint(session, model_config: dict, model, backend, *, position: Position, results: list[MethodResult],
                    method_state: dict, carried: dict, baseline: dict | None, window: list[float],
                    metrics: dict, secret: int | None = None) -> dict:
    """Report a checkpoint (every rank must call); returns the model's full state dict.

    `model` is the unwrapped model as the method left it (after a task, e.g. with LoRA
    adapters already merged).
    """
    full_state = backend.full_state_dict() if backend.shards_parameters else unwrap(model).state_dict()
    # Every rank asks: a sharded backend gathers its optimizer state collectively.
    backend_state = backend.state_dict() if position.step > 0 else None
    if session.rank != 0:
        session.report(metrics)
        return full_state
    with tempfile.TemporaryDirectory(prefix="palimpsest-ckpt-") as tmp:
        if backend.shards_parameters:
            model = build_model(model_config)
            model.load_state_dict(full_state)
        export_pretrained(model, tmp)
        (Path(tmp) / PROMPT_FILE).write_text(json.dumps(prompt_format(model_config.get("eos_id")), indent=2) + "\n")
        # Readable without loading the weights: runners find task-end checkpoints by it.
        (Path(tmp) / POSITION_FILE).write_text(json.dumps(metrics) + "\n")
        torch.save({
            "position": asdict(position),
            "model": full_state,
            "backend": backend_state,
            "carried": carried,
            "method": method_state,
            "results": [asdict(r) for r in results],
            "baseline": baseline,
            "window": list(window),
            "secret": None if secret is None else f"{secret:x}",
        }, Path(tmp) / STATE_FILE)
        os.chmod(Path(tmp) / STATE_FILE, 0o600)  # the local session's copy keeps it; Ray's gets the umask below
        # Ray's copy into storage does not keep file modes: a private run's persisted files are made
        # owner-only (umask 077) while it copies them, as the local session's copy keeps 0600 itself.
        previous = os.umask(0o077) if secret is not None else None
        try:
            session.report(metrics, checkpoint_dir=tmp)
        finally:
            if previous is not None:
                os.umask(previous)
    return full_state


@dataclass
class SavedState:
    position: Position
    model: dict
    backend: dict | None
    carried: dict
    method: dict
    results: list[MethodResult]
    baseline: dict | None
    window: list[float]
    secret: int | None = None


def load_checkpoint(checkpoint_dir: str | None) -> SavedState | None:
    """The trainer state in `checkpoint_dir`, or None when there is none."""
    if not checkpoint_dir:
        return None
    path = Path(checkpoint_dir) / STATE_FILE
    if not path.exists():
        return None
    raw = torch.load(path, map_location="cpu", weights_only=False)
    return SavedState(position=Position(**raw["position"]), model=raw["model"], backend=raw["backend"],
                      carried=raw.get("carried") or {}, method=raw["method"],
                      results=[MethodResult(**r) for r in raw["results"]], baseline=raw["baseline"],
                      window=raw["window"], secret=int(raw["secret"], 16) if raw.get("secret") else None)
