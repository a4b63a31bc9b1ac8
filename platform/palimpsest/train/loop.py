"""The one training loop for every LLM job: a Ray Train worker function that also runs without Ray.

`train_loop_per_worker(config)` is handed to `TorchTrainer`; `run_without_ray(config,
dir)` runs the same code at world size 1. Everything comes from `config` (plain,
picklable data built by a runner). A run is a sequence of tasks (a `train` job has
one); per task a continual method (`palimpsest.continual`) may reshape batches, add a
loss term, and act before and after the task. The global batch of every step is a
pure function of (seed, task, step, method state), so a restart from a checkpoint
replays the same steps exactly.

Checkpoints hold (task, step, model, optimizer, method state, results so far). Every
task end is checkpointed with `task_end` in its metrics; its files are the model in
transformers format plus `trainer_state.pt`.
"""

from __future__ import annotations

import logging
import tempfile
import time
from pathlib import Path

import torch
import torch.distributed as dist

from palimpsest.continual import LoopState, make_method
from palimpsest.models import build_model, count_parameters, export_pretrained, unwrap
from palimpsest.train.backends import make_backend
from palimpsest.train.batching import TokenizedQA, collate_qa, normalised_loss, token_losses
from palimpsest.train.evaluate import evaluate_qa
from palimpsest.train.session import LocalSession, RaySession, TrainSession

STATE_FILE = "trainer_state.pt"
EVAL_METRICS = ("answer_accuracy", "token_accuracy", "loss")


def train_loop_per_worker(config: dict) -> dict:
    """Ray Train entry point (one call per worker)."""
    # Ray Train logs every report at INFO on every worker; the loop prints its own progress.
    # (Its execution context logs under its file path, not under "ray.train".)
    logging.getLogger("ray.train").setLevel(logging.WARNING)
    try:
        from ray.train.v2._internal.execution import context as train_context

        logging.getLogger(train_context.__file__).setLevel(logging.WARNING)
    except ImportError:  # another Ray layout: the lines stay, nothing breaks
        pass
    return run_training(config, RaySession(resume_from=config.get("resume_from")))


def run_without_ray(config: dict, checkpoint_root: str | Path) -> dict:
    """Same loop, world size 1, in this process."""
    return run_training(config, LocalSession(checkpoint_root, resume_from=config.get("resume_from")))


def _items(raw) -> list[TokenizedQA]:
    return [it if isinstance(it, TokenizedQA) else TokenizedQA(tuple(it[0]), tuple(it[1])) for it in raw]


class _Run:
    """The mutable state of one run on one worker (what a checkpoint captures)."""

    def __init__(self, config: dict, session: TrainSession):
        self.config, self.session = config, session
        self.training = config["training"]
        self.steps = self.training["steps"]
        self.tasks = [_items(t) for t in config["tasks"]]
        self.eval_sets = {name: _items(raw) for name, raw in config["eval_sets"].items()}
        self.task_eval_names = config.get("task_eval_names") or [None] * len(self.tasks)
        self.pad_id, self.eos_id = config["model"]["pad_id"], config["model"]["eos_id"]
        method = config.get("method") or {"name": "naive", "params": {}}
        self.method = make_method(method["name"], **method.get("params", {}))
        self.records: list[dict] = []
        self.task_end: list[dict] = []
        self.task_end_steps: list[int] = []
        self.baseline: dict | None = None
        self.train_tokens = 0

    # ------------------------------------------------------------------ evaluation
    def evaluate(self, model, names, *, step: int, task: int, replicated: bool = False) -> dict:
        """Evaluate `names`; each rank takes a shard, or (replicated, for ZeRO-3) all of it."""
        rank, world = (0, 1) if replicated else (self.session.rank, self.session.world_size)
        results = {}
        for name in names:
            metrics = evaluate_qa(model, self.eval_sets[name], pad_id=self.pad_id, eos_id=self.eos_id,
                                  batch_size=self.config["eval"]["batch_size"], device=self.session.device,
                                  rank=rank, world_size=world)
            results[name] = metrics
            self.records += [{"step": step, "task": task, "split": name, "metric": m, "value": metrics[m]}
                             for m in EVAL_METRICS]
        return results

    def periodic_eval_names(self, task: int) -> list[str]:
        if self.config.get("periodic_eval", "all") == "all":
            return list(self.eval_sets)
        return [n for n in self.task_eval_names[: task + 1] if n]  # continual evaluation: seen tasks

    # ------------------------------------------------------------------ checkpoints
    def save(self, model, backend, *, task: int, step: int, metrics: dict, window=(0.0, 0.0)) -> dict:
        """Every rank reports; rank 0 attaches an HF-format model plus the trainer state.

        `model` is the unwrapped model as the method left it (after a task, e.g. with
        LoRA adapters already merged). Returns the full state dict (gathered under ZeRO-3).
        """
        full_state = backend.full_state_dict() if backend.shards_parameters else unwrap(model).state_dict()
        if self.session.rank != 0:
            self.session.report(metrics)
            return full_state
        with tempfile.TemporaryDirectory(prefix="palimpsest-ckpt-") as tmp:
            if backend.shards_parameters:
                model = build_model(self.config["model"])
                model.load_state_dict(full_state)
            export_pretrained(model, tmp)
            torch.save({
                "task": task, "step": step,
                "model": full_state,
                "backend": backend.state_dict() if step > 0 else None,
                "method": self.method.state_dict(),
                "records": self.records, "task_end": self.task_end, "task_end_steps": self.task_end_steps,
                "baseline": self.baseline, "train_tokens": self.train_tokens, "window": list(window),
            }, Path(tmp) / STATE_FILE)
            self.session.report(metrics, checkpoint_dir=tmp)
        return full_state

    def restore(self, state: dict) -> None:
        self.method.load_state_dict(state["method"])
        self.records, self.task_end = state["records"], state["task_end"]
        self.task_end_steps, self.baseline = state["task_end_steps"], state["baseline"]
        self.train_tokens = state["train_tokens"]


def _seed_for(seed: int, task: int) -> int:
    return seed * 7919 + task


def run_training(config: dict, session: TrainSession) -> dict:
    """Train task after task and evaluate; returns records, per-task results and cost (rank 0's is kept)."""
    if config.get("threads"):
        torch.set_num_threads(int(config["threads"]))
    run = _Run(config, session)
    rank, world, steps, training = session.rank, session.world_size, run.steps, run.training
    model = build_model(config["model"]).to(session.device)
    state = _load_state(session.latest_checkpoint())
    start_task, start_step = (state["task"], state["step"]) if state else (0, 0)
    if state:
        run.restore(state)
    loop_state = LoopState(model=model, tasks=run.tasks, task=start_task, seed=config["seed"],
                           batch_size=training["batch_size"], steps_per_task=steps, pad_id=run.pad_id,
                           eos_id=run.eos_id, device=session.device, rank=rank, world_size=world,
                           general=_items(config.get("general_items", [])))
    if state is None and config.get("baseline_eval"):
        run.baseline = {n: m for n, m in run.evaluate(model, list(run.eval_sets), step=0, task=0).items()}
        run.records = []  # the baseline lives in its own field, not in the curves
    t0 = time.perf_counter()
    # Answer-token loss sum and count since the last log record (checkpointed, so a resume
    # between two log steps reports the same average). On the device: NCCL reduces only there.
    window = torch.tensor(state["window"] if state and "window" in state else [0.0, 0.0], dtype=torch.float64,
                          device=session.device)

    for task in range(start_task, len(run.tasks)):
        loop_state.task = task
        resuming_mid_task = state is not None and task == start_task and start_step > 0
        if state is not None and task == start_task and not resuming_mid_task:
            unwrap(loop_state.model).load_state_dict(state["model"])
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(_seed_for(config["seed"], task))  # adapters etc. initialise identically on resume
            run.method.before_task(loop_state)
        if resuming_mid_task:
            unwrap(loop_state.model).load_state_dict(state["model"])
        backend = make_backend(training["backend"], loop_state.model, training, world_size=world,
                               device=session.device)
        if resuming_mid_task and state.get("backend"):
            backend.load_state_dict(state["backend"])
        wrapped = backend.model
        wrapped.train()
        first = start_step if task == start_task else 0
        for step in range(first, steps):
            _maybe_inject_failure(config.get("fail_at"), task, step, rank)
            # Dropout and other randomness: a function of (seed, task, step), so a resume replays it.
            torch.manual_seed(_seed_for(config["seed"], task) * 100_003 + step)
            batch_items = run.method.global_batch(loop_state, step)
            global_tokens = sum(len(it.answer) + 1 for it in batch_items)
            run.train_tokens += sum(len(it.prompt) + len(it.answer) + 1 for it in batch_items)
            per_rank = len(batch_items) // world
            mine = batch_items[rank * per_rank : (rank + 1) * per_rank]
            accum = training["grad_accum"]
            micro = [mine[i::accum] for i in range(accum)]
            for k, chunk in enumerate(micro):
                batch = {key: v.to(session.device) for key, v in collate_qa(chunk, pad_id=run.pad_id,
                                                                            eos_id=run.eos_id).items()}
                with backend.accumulating(k == accum - 1):
                    outputs = wrapped(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
                    losses, mask = token_losses(outputs.logits, batch["labels"])
                    loss = normalised_loss(losses.sum(), global_tokens, world)
                    extra = run.method.extra_loss(loop_state, wrapped, batch, outputs)
                    if extra is not None:
                        loss = loss + extra / accum
                    backend.backward(loss)
                window += torch.tensor([losses.sum().item(), mask.sum().item()], dtype=torch.float64,
                                       device=window.device)
            grad_norm = backend.step()
            run.method.after_step(loop_state, step + 1)
            done, global_step = step + 1, task * steps + step + 1
            if done % training["log_every"] == 0 or done == steps:
                if world > 1:
                    dist.all_reduce(window)
                train_loss = (window[0] / window[1].clamp(min=1)).item()
                run.records.append({"step": global_step, "task": task, "split": "train", "metric": "train_loss",
                                    "value": train_loss})
                window.zero_()
                if rank == 0:
                    print(f"[palimpsest] task {task + 1}/{len(run.tasks)} step {done}/{steps} "
                          f"train_loss {train_loss:.4f} grad_norm {grad_norm:.3f} "
                          f"({time.perf_counter() - t0:.1f}s)", flush=True)
            if done == steps:
                break
            if config["eval"].get("eval_every") and done % config["eval"]["eval_every"] == 0:
                run.evaluate(wrapped, run.periodic_eval_names(task), step=global_step, task=task,
                             replicated=backend.shards_parameters)
            if training.get("checkpoint_every") and done % training["checkpoint_every"] == 0:
                run.save(loop_state.model, backend, task=task, step=done, metrics={"task": task, "step": done},
                         window=window.tolist())
        run.method.after_task(loop_state)
        global_step = (task + 1) * steps
        run.task_end.append(run.evaluate(loop_state.model, list(run.eval_sets), step=global_step, task=task,
                                         replicated=backend.shards_parameters))
        run.task_end_steps.append(global_step)
        full_state = run.save(loop_state.model, backend, task=task + 1, step=0,
                              metrics={"task_end": task, "step": global_step})
        backend.close()
        if backend.shards_parameters:  # the next task (or the caller) gets a plain, whole model
            loop_state.model = build_model(config["model"]).to(session.device)
            loop_state.model.load_state_dict(full_state)

    return {
        "records": run.records,
        "final": run.task_end[-1],
        "task_end": run.task_end,
        "task_end_steps": run.task_end_steps,
        "baseline": run.baseline,
        "train_tokens": run.train_tokens,
        "steps": steps * len(run.tasks),
        "parameters": count_parameters(loop_state.model),
        "train_wall_s": time.perf_counter() - t0,
    }


def _maybe_inject_failure(fail_at: dict | None, task: int, step: int, rank: int) -> None:
    """Test hook: raise once at (task, step) on rank 0; a marker file makes the restart pass."""
    if not fail_at or rank != 0 or (task, step) != (fail_at["task"], fail_at["step"]):
        return
    marker = Path(fail_at["marker"])
    if marker.exists():
        return
    marker.write_text("failed once\n")
    raise RuntimeError(f"injected failure at task {task} step {step}")


def _load_state(checkpoint_dir: str | None) -> dict | None:
    if not checkpoint_dir:
        return None
    path = Path(checkpoint_dir) / STATE_FILE
    if not path.exists():
        return None
    return torch.load(path, map_location="cpu", weights_only=False)
