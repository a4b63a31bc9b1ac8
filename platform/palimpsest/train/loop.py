"""The one training loop for every LLM job: a Ray Train worker function that also runs without Ray.

`train_loop_per_worker(config)` is handed to `TorchTrainer`; `run_without_ray(config,
dir)` runs the same code at world size 1. Everything comes from `config` (plain,
picklable data built by a runner): model config, tokenized items, eval sets,
training settings. Per step s the global batch is a pure function of (seed, s), so a
restart from the step-k checkpoint replays steps k.. exactly.

Extension points for the capabilities that follow: `Backend` (DeepSpeed, Opacus),
and `LossHooks.extra_loss` (continual-learning regularisers, unlearning losses).
"""

from __future__ import annotations

import logging
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from palimpsest.models import build_model, count_parameters, export_pretrained, unwrap
from palimpsest.train.backends import make_backend
from palimpsest.train.batching import (
    TokenizedQA,
    collate_qa,
    global_batch_indices,
    normalised_loss,
    shard_for_rank,
    token_losses,
)
from palimpsest.train.evaluate import evaluate_qa
from palimpsest.train.session import LocalSession, RaySession, TrainSession

log = logging.getLogger(__name__)
STATE_FILE = "trainer_state.pt"


class LossHooks:
    """Extra loss terms on top of the task loss (none by default)."""

    def extra_loss(self, model: torch.nn.Module, batch: dict, outputs) -> torch.Tensor | None:
        return None


def train_loop_per_worker(config: dict) -> dict:
    """Ray Train entry point (one call per worker)."""
    # Ray Train logs every report at INFO on every worker; the loop prints its own progress.
    logging.getLogger("ray.train").setLevel(logging.WARNING)
    return run_training(config, RaySession(resume_from=config.get("resume_from")))


def run_without_ray(config: dict, checkpoint_root: str | Path) -> dict:
    """Same loop, world size 1, in this process."""
    return run_training(config, LocalSession(checkpoint_root, resume_from=config.get("resume_from")))


def _items(raw) -> list[TokenizedQA]:
    return [it if isinstance(it, TokenizedQA) else TokenizedQA(tuple(it[0]), tuple(it[1])) for it in raw]


def run_training(config: dict, session: TrainSession, hooks: LossHooks | None = None) -> dict:
    """Train and evaluate; returns metric records, final metrics and cost (rank 0's is kept)."""
    hooks = hooks or LossHooks()
    training, seed = config["training"], config["seed"]
    if config.get("threads"):
        torch.set_num_threads(int(config["threads"]))
    rank, world = session.rank, session.world_size
    model = build_model(config["model"])
    state = _load_state(session.latest_checkpoint())
    if state is not None:
        unwrap(model).load_state_dict(state["model"])
    backend = make_backend(training["backend"], model, training, world_size=world, device=session.device)
    if state is not None:
        backend.load_state_dict(state["backend"])
    model = backend.model
    model.train()

    items = _items(config["train_items"])
    eval_sets = {name: _items(raw) for name, raw in config["eval_sets"].items()}
    pad_id, eos_id = config["model"]["pad_id"], config["model"]["eos_id"]
    steps, batch_size, accum = training["steps"], training["batch_size"], training["grad_accum"]
    start = state["step"] if state else 0
    records: list[dict] = state["records"] if state else []
    train_tokens = state["train_tokens"] if state else 0
    window = torch.zeros(2, dtype=torch.float64)  # loss sum, tokens since the last log record
    t0 = time.perf_counter()

    def evaluate(step: int) -> dict:
        results = {}
        for name, eval_items in eval_sets.items():
            metrics = evaluate_qa(model, eval_items, pad_id=pad_id, eos_id=eos_id,
                                  batch_size=config["eval"]["batch_size"], device=session.device,
                                  rank=rank, world_size=world)
            results[name] = metrics
            for metric in ("answer_accuracy", "token_accuracy", "loss"):
                records.append({"step": step, "task": config.get("task", 0), "split": name,
                                "metric": metric, "value": metrics[metric]})
        return results

    for step in range(start, steps):
        indices = global_batch_indices(step, num_examples=len(items), batch_size=batch_size, seed=seed)
        global_tokens = sum(len(items[i].answer) + 1 for i in indices)
        train_tokens += sum(len(items[i].prompt) + len(items[i].answer) + 1 for i in indices)
        micro_batches = np.array_split(shard_for_rank(indices, rank=rank, world_size=world), accum)
        for k, micro in enumerate(micro_batches):
            batch = collate_qa([items[i] for i in micro], pad_id=pad_id, eos_id=eos_id)
            batch = {key: value.to(session.device) for key, value in batch.items()}
            with backend.accumulating(k == len(micro_batches) - 1):
                outputs = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
                losses, mask = token_losses(outputs.logits, batch["labels"])
                loss = normalised_loss(losses.sum(), global_tokens, world)
                extra = hooks.extra_loss(model, batch, outputs)
                if extra is not None:
                    loss = loss + extra / accum
                backend.backward(loss)
            window += torch.tensor([losses.sum().item(), mask.sum().item()], dtype=torch.float64)
        grad_norm = backend.step()
        done = step + 1
        if done % training["log_every"] == 0 or done == steps:
            if world > 1:
                dist.all_reduce(window)
            train_loss = (window[0] / window[1].clamp(min=1)).item()
            records.append({"step": done, "task": config.get("task", 0), "split": "train",
                            "metric": "train_loss", "value": train_loss})
            window.zero_()
            if rank == 0:
                print(f"[palimpsest] step {done}/{steps} train_loss {train_loss:.4f} "
                      f"grad_norm {grad_norm:.3f} ({time.perf_counter() - t0:.1f}s)", flush=True)
        if done == steps:
            break
        if config["eval"].get("eval_every") and done % config["eval"]["eval_every"] == 0:
            evaluate(done)
        if training.get("checkpoint_every") and done % training["checkpoint_every"] == 0:
            _save_and_report(session, backend, done, records, train_tokens, {"step": done})

    final = evaluate(steps)
    _save_and_report(session, backend, steps, records, train_tokens,
                     {"step": steps, **{f"{s}/{m}": v for s, ms in final.items() for m, v in ms.items()}})
    return {
        "records": records,
        "final": final,
        "train_tokens": train_tokens,
        "steps": steps,
        "parameters": count_parameters(model),
        "train_wall_s": time.perf_counter() - t0,
    }


def _save_and_report(session: TrainSession, backend, step: int, records, train_tokens, metrics: dict) -> None:
    """Every rank reports; rank 0 attaches an HF-format checkpoint plus the trainer state."""
    if session.rank != 0:
        session.report(metrics)
        return
    with tempfile.TemporaryDirectory(prefix="palimpsest-ckpt-") as tmp:
        export_pretrained(backend.model, tmp)
        torch.save(
            {
                "step": step,
                "model": unwrap(backend.model).state_dict(),
                "backend": backend.state_dict(),
                "records": list(records),
                "train_tokens": train_tokens,
            },
            Path(tmp) / STATE_FILE,
        )
        session.report(metrics, checkpoint_dir=tmp)


def _load_state(checkpoint_dir: str | None) -> dict | None:
    if not checkpoint_dir:
        return None
    path = Path(checkpoint_dir) / STATE_FILE
    if not path.exists():
        return None
    return torch.load(path, map_location="cpu", weights_only=False)
