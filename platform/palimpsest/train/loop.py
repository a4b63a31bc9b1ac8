"""The one training loop for every LLM job: a Ray Train worker function that also runs without Ray.

`train_loop_per_worker(config)` is handed to `TorchTrainer`; `run_without_ray(config,
dir)` runs the same code at world size 1. Everything comes from `config`, a
`LoopConfig`. A run is one or more methods, each over the same sequence of tasks from
the same initial model (a `train` job: one task, plain fine-tuning), all in one call, so
a multi-method comparison pays Ray Train's worker-group start once.

Where each concern lives: one optimizer step in `step.py`, evaluation in `evaluate.py`,
checkpoints in `checkpoint.py`, the method hooks in `hooks.py`. The global batch of every
step is a pure function of (seed, method, task, step, method state), so a restart from a
checkpoint replays the same steps exactly.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

import torch
import torch.distributed as dist

from palimpsest import progress as ui
from palimpsest.models import build_model, count_parameters, unwrap
from palimpsest.privacy import epsilon_spent, fresh_secret, method_secret
from palimpsest.train.backends import make_backend
from palimpsest.train.checkpoint import MethodResult, Position, SavedState, load_checkpoint, save_checkpoint
from palimpsest.train.config import LoopConfig, TaskEnd
from palimpsest.train.evaluate import evaluate_sets, metric_records
from palimpsest.train.flops import FlopMeter
from palimpsest.train.hooks import LoopContext
from palimpsest.train.sampling import derive_seed
from palimpsest.train.session import LocalSession, RaySession, TrainSession
from palimpsest.train.step import train_step


# Steps at the start of each task left out of the steady-state throughput (allocator and
# kernel warm-up, the first steps' lazy initialisation).
STEADY_SKIP = 3


def train_loop_per_worker(config: LoopConfig) -> dict:
    """Ray Train entry point (one call per worker)."""
    # Ray Train logs every report at INFO on every worker; the loop prints its own progress.
    # (Its execution context logs under its file path, not under "ray.train".)
    logging.getLogger("ray.train").setLevel(logging.WARNING)
    try:
        from ray.train.v2._internal.execution import context as train_context

        logging.getLogger(train_context.__file__).setLevel(logging.WARNING)
    except ImportError:  # another Ray layout: the lines stay, nothing breaks
        pass
    return run_training(config, RaySession(resume_from=config.resume_from))


def run_without_ray(config: LoopConfig, checkpoint_root: str | Path) -> dict:
    """Same loop, world size 1, in this process."""
    return run_training(config, LocalSession(checkpoint_root, resume_from=config.resume_from))


class _Run:
    """One worker's run: the config, its session, results so far and the wall clock."""

    def __init__(self, config: LoopConfig, session: TrainSession, saved: SavedState | None):
        self.config, self.session = config, session
        self.secret = _run_secret(config, session, saved)
        self.results: list[MethodResult] = saved.results if saved else []
        self.baseline: dict | None = saved.baseline if saved else None
        self.window = torch.tensor(saved.window if saved else [0.0, 0.0], dtype=torch.float64, device=session.device)
        self.clock = time.perf_counter()
        self.name = _run_name(session) if session.rank == 0 else ""
        self.stage = f"{config.stage} · " if config.stage else ""  # which of a job's fits (runners/common.fit)

    def noise_seed(self, method: int) -> int | None:
        """What method `method`'s DP noise and Poisson batches derive from (None: not private)."""
        if self.config.privacy is None:
            return None
        if self.config.privacy.reproducible:
            return self.config.seed  # the public seed: the run says its guarantee is void
        return method_secret(self.secret, method)

    def tick(self, result: MethodResult) -> None:
        """Add the time since the last tick to `result.wall_s` (checkpointed, so resumes add up)."""
        now = time.perf_counter()
        result.wall_s += now - self.clock
        self.clock = now

    def evaluate(self, model, names, *, replicated: bool, result: MethodResult | None = None) -> dict:
        """Score `names`; with `result`, the time spent goes to its `eval_wall_s`, not its `wall_s`."""
        if result is not None:
            self.tick(result)
        rank, world = (0, 1) if replicated else (self.session.rank, self.session.world_size)
        cfg = self.config
        scores = evaluate_sets(model, cfg.eval_sets, names, pad_id=cfg.model["pad_id"], eos_id=cfg.model["eos_id"],
                               batch_size=cfg.evaluation.batch_size, device=self.session.device, rank=rank,
                               world_size=world)
        if result is not None:
            now = time.perf_counter()
            result.eval_wall_s += now - self.clock
            self.clock = now
        return scores

    def periodic_names(self, task: int) -> list[str]:
        if self.config.evaluation.periodic == "all" or not self.config.task_eval_names:
            return list(self.config.eval_sets)
        return self.config.task_eval_names[: task + 1]  # continual evaluation: the seen tasks

    def progress_key(self, method: int, task: int) -> str:
        """The display's row for one task's steps (`palimpsest.progress`)."""
        return f"{self.name}/{method}/{task}"

    def label(self, result: MethodResult) -> str:
        """The method's name in front of its lines when a run has several (or a continual stream's tasks)."""
        cfg = self.config
        return f"{result.name} · " if len(cfg.methods) > 1 or cfg.task_eval_names else ""

    def log_train_loss(self, result: MethodResult, *, task: int, done: int, total: int, stream_step: int, grad_norm,
                       backend, method, key: str) -> None:
        """The train loss since the last log point into the records; on rank 0 a line and the display's row.

        `done` of `total`: the steps of this task the loop has run and runs (the method's own schedule;
        an unlearning run's `retrain` trains with the target's).
        """
        if self.session.world_size > 1:
            dist.all_reduce(self.window)
        train_loss = (self.window[0] / self.window[1].clamp(min=1)).item()
        self.window.zero_()
        result.records.append({"step": stream_step, "task": task, "split": "train", "metric": "train_loss",
                               "value": train_loss})
        if self.session.rank == 0:
            cfg = self.config
            extra = {**backend.progress(), **method.progress()}  # e.g. ε spent so far
            result.records += [{"step": stream_step, "task": task, "split": "train", "metric": name, "value": value}
                               for name, value in extra.items()]
            ui.say(f"{self.label(result)}task {task + 1}/{len(cfg.tasks)} step {done}/{total} "
                   f"train_loss {train_loss:.4f} grad_norm {float(grad_norm):.3f} "
                   + "".join(f"{name} {value:.4g} " for name, value in extra.items())
                   + f"({result.wall_s + time.perf_counter() - self.clock:.1f}s)")
            ui.update(key, done=done, note=f"train_loss {train_loss:.4f}")


def run_training(config: LoopConfig, session: TrainSession) -> dict:
    """Run every method over every task; returns each method's results (rank 0's output is kept)."""
    torch.set_num_threads(max(1, config.threads))
    if not torch.cuda.is_available():
        # Name DeepSpeed's accelerator: otherwise every worker warns that it fell back to the CPU.
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    saved = load_checkpoint(session.latest_checkpoint())
    run = _Run(config, session, saved)
    if saved is None and config.evaluation.baseline:
        baseline_model = build_model(config.model, random_init=config.evaluation.baseline == "random_init")
        run.baseline = run.evaluate(baseline_model.to(session.device), list(config.eval_sets), replicated=False)
        del baseline_model
    first_method = 0 if saved is None else saved.position.method
    for index in range(first_method, len(config.methods)):
        resume = saved if saved is not None and index == saved.position.method else None
        if resume is not None and resume.position.task == len(config.tasks):
            continue  # this method had finished when the checkpoint was taken
        _run_method(run, index, resume)
    return {
        "methods": [vars(result) for result in run.results],
        "baseline": run.baseline,
        "steps": config.optimisation.steps * len(config.tasks),
    }


def _run_method(run: _Run, index: int, saved: SavedState | None) -> None:
    """All tasks of method `index`, from the start or from `saved`'s position."""
    config, session = run.config, run.session
    spec = config.methods[index]
    opt, model_cfg = config.optimisation_of(spec), config.model_of(spec)
    method = spec.build()
    if saved is not None:
        method.load_state_dict(saved.method)
    else:
        run.results.append(MethodResult(name=spec.name, steps=opt.steps))
        if spec.first_task == len(config.tasks):  # every task was done by an earlier run
            return
    result = run.results[index]
    run.clock = time.perf_counter()
    ctx = LoopContext(model=build_model(model_cfg).to(session.device), tasks=config.tasks, task=0,
                      seed=config.seed, batch_size=opt.batch_size, steps_per_task=opt.steps,
                      pad_id=model_cfg["pad_id"], eos_id=model_cfg["eos_id"], device=session.device,
                      rank=session.rank, world_size=session.world_size, general=config.general,
                      models=config.models)
    meter = FlopMeter()
    start_task, start_step = (saved.position.task, saved.position.step) if saved else (spec.first_task, 0)
    carried = saved.carried if saved else {}
    for task in range(start_task, len(config.tasks)):
        ctx.task = task
        ctx.pools = {name: per_task[task] for name, per_task in config.pools.items()}
        resuming = saved is not None and task == start_task
        mid_task = resuming and start_step > 0
        if resuming:
            method.prepare_model(ctx)
        if resuming and not mid_task:
            unwrap(ctx.model).load_state_dict(saved.model)
        meter.watch(ctx.model)
        with torch.random.fork_rng(devices=[]), meter.counting():
            torch.manual_seed(derive_seed(config.seed, "before-task", index, task))  # adapters init identically
            method.before_task(ctx)
        meter.watch(ctx.model)  # a method may start from a model of its own (retraining)
        if mid_task:
            unwrap(ctx.model).load_state_dict(saved.model)
        backend = make_backend(ctx.model, opt, world_size=session.world_size, device=session.device, carried=carried,
                               privacy=config.privacy, noise_seed=run.noise_seed(index), people=config.task_people)
        result.precision = backend.compute_precision()
        if mid_task and saved.backend:
            backend.load_state_dict(saved.backend)
        backend.model.train()
        first = start_step if mid_task else 0
        key = run.progress_key(index, task)
        if session.rank == 0:  # (one event per task and per log point, never per step)
            ui.begin(key, f"{run.stage}{run.label(result)}task {task + 1}/{len(config.tasks)} steps", opt.steps,
                     done=first, transient=True)
        steady = _SteadyClock(result, first + min(STEADY_SKIP, max(opt.steps - first - 1, 0)), session.device)

        def checkpoint(position: Position, metrics: dict) -> dict:
            run.tick(result)
            return save_checkpoint(session, model_cfg, ctx.model, backend, position=position,
                                   results=run.results, method_state=method.state_dict(),
                                   carried=backend.carry_over(), baseline=run.baseline,
                                   window=run.window.tolist(), metrics={"method": spec.name, **metrics},
                                   secret=run.secret)

        for step in range(first, opt.steps):
            _maybe_inject_failure(config.fail_at, index, task, step, session.rank)
            _maybe_hold(task, step, session.rank)
            steady.at_step(step)
            # Dropout and other randomness: a function of (seed, method, task, step), so a resume replays it.
            _seed_step(derive_seed(config.seed, "step", index, task, step), session.device)
            batch = backend.choose_batch(method, ctx, step)
            ctx.lr = backend.learning_rate()
            tokens = sum(len(it.prompt) + len(it.answer) + 1 for _, it in batch.flat())
            result.train_tokens += tokens
            steady.count(step, tokens)
            with meter.counting():
                grad_norm = train_step(ctx, method, backend, batch, accumulation=opt.grad_accum, window=run.window)
                method.after_step(ctx, step + 1, batch)
            result.flops_local, meter.flops = result.flops_local + meter.flops, 0.0
            done, stream_step = step + 1, ctx.stream_step(step + 1)
            if done == opt.steps:
                steady.stop()  # before the last log line (a private run's ε is computed for it)
            if done % opt.log_every == 0 or done == opt.steps:
                run.log_train_loss(result, task=task, done=done, total=opt.steps, stream_step=stream_step,
                                   grad_norm=grad_norm, backend=backend, method=method, key=key)
            if done == opt.steps:
                break
            if config.evaluation.every and done % config.evaluation.every == 0:
                evaluated = run.evaluate(backend.model, run.periodic_names(task),
                                         replicated=backend.shards_parameters, result=result)
                result.records += metric_records(evaluated, step=stream_step, task=task)
                # Every rank reports (Ray Train's report is collective): a search acts on these.
                session.report({"method": spec.name, "task": task, "step": stream_step, "scores": evaluated})
            if opt.checkpoint_every and done % opt.checkpoint_every == 0:
                checkpoint(Position(index, task, done), {"task": task, "step": done})
        if session.rank == 0:
            ui.end(key)
        with meter.counting():
            method.after_task(ctx)
        result.flops_local, meter.flops = result.flops_local + meter.flops, 0.0
        end_step = ctx.stream_step(opt.steps)
        evaluated = run.evaluate(ctx.model, list(config.eval_sets), replicated=backend.shards_parameters,
                                 result=result)
        result.records += metric_records(evaluated, step=end_step, task=task)
        result.task_end.append(evaluated)
        result.task_end_steps.append(end_step)
        result.parameters = count_parameters(ctx.model)
        if task == len(config.tasks) - 1 and config.privacy is not None:
            result.privacy = _privacy_spent(config.privacy, backend.carry_over()["privacy_history"])
        hooked = _close_task(run, result, ctx, task, opt.steps)
        # The task end's figures travel with its checkpoint: `scores` per eval set, and what the
        # task-end hook measured (unlearning: the request's metrics) as `hook`.
        full_state = checkpoint(Position(index, task + 1, 0), {
            "task_end": task, "step": end_step, "scores": evaluated,
            "hook": {r["metric"]: r["value"] for r in hooked}})
        carried = backend.carry_over()
        backend.close()
        if backend.shards_parameters:  # the next task (or the caller) gets a plain, whole model
            ctx.model = build_model(model_cfg).to(session.device)
            ctx.model.load_state_dict(full_state)


def _run_name(session: TrainSession) -> str:
    """The fit's name (its checkpoint folder's: `<run folder>-retain`, …), told apart in the display."""
    root = getattr(session, "root", None)
    if root is not None:
        return Path(root).name
    try:
        from ray import train

        return train.get_context().get_experiment_name()
    except Exception:  # noqa: BLE001 - another Ray layout: a name unique to this worker
        return f"pid-{os.getpid()}"


def _run_secret(config: LoopConfig, session: TrainSession, saved: SavedState | None) -> int | None:
    """A private run's secret: its checkpoint's (a restart or resume replays the same noise), else a fresh one.

    Rank 0 draws it from OS entropy and sends it to the other ranks (they must draw the
    same Poisson batches; only rank 0 adds noise under DPDDP). None when the run is not
    private or is `reproducible` (its noise derives from the public seed).
    """
    if config.privacy is None or config.privacy.reproducible:
        return None
    if saved is not None and saved.secret is not None:
        return saved.secret
    box = [fresh_secret() if session.rank == 0 else None]
    if session.world_size > 1:
        dist.broadcast_object_list(box, src=0, device=session.device)
    return box[0]


def _seed_step(seed: int, device) -> None:
    """Seed the generators a step draws from (dropout): the CPU's and this step's GPU's.

    `torch.manual_seed` would also seed every other backend torch knows of, ~1 ms a call in
    a loaded process: a few percent of a small model's step.
    """
    torch.default_generator.manual_seed(seed)
    if device.type == "cuda":
        torch.cuda.manual_seed(seed)  # the current device's generator (each worker owns one GPU)


class _SteadyClock:
    """Times one task's steps from step `start` to its last, for `result.steady_*` (evaluation left out).

    A GPU is synchronised at the two ends only: the steps themselves stay free of host syncs.
    """

    def __init__(self, result: MethodResult, start: int, device):
        self.result, self.start, self.device = result, start, device
        self.began: float | None = None
        self.eval_before = 0.0
        self.steps = self.tokens = 0

    def _now(self) -> float:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        return time.perf_counter()

    def at_step(self, step: int) -> None:
        if step == self.start:
            self.began, self.eval_before = self._now(), self.result.eval_wall_s

    def count(self, step: int, tokens: int) -> None:
        if self.began is not None:
            self.steps, self.tokens = self.steps + 1, self.tokens + tokens

    def stop(self) -> None:
        if self.began is None:
            return
        result = self.result
        result.steady_wall_s += self._now() - self.began - (result.eval_wall_s - self.eval_before)
        result.steady_steps += self.steps
        result.steady_tokens += self.tokens
        self.began = None


def _close_task(run: _Run, result: MethodResult, ctx: LoopContext, task: int, steps: int) -> list[dict]:
    """Record the task's own tokens and wall time; on rank 0, call the run's task-end hook (its records returned).

    Both come before the task-end checkpoint, so what the hook writes (unlearning: the
    ledger's `done`) is never missing for a task a checkpoint says is finished.
    """
    run.tick(result)
    result.task_tokens.append(result.train_tokens - sum(result.task_tokens))
    result.task_wall_s.append(result.wall_s - sum(result.task_wall_s))
    local, result.flops_local_closed = result.flops_local - result.flops_local_closed, result.flops_local
    result.task_flops.append(_sum_over_ranks(local, run.session.device))
    if run.config.task_end is None or run.session.rank != 0:
        return []
    with torch.random.fork_rng(devices=[]):
        records = run.config.task_end(TaskEnd(
            method=result.name, task=task, model=unwrap(ctx.model), steps=steps,
            train_tokens=result.task_tokens[-1], wall_s=result.task_wall_s[-1], parameters=result.parameters,
            train_flops=result.task_flops[-1]))
    result.records += records
    run.clock = time.perf_counter()  # the hook's own time is not the task's
    return records


def _sum_over_ranks(value: float, device) -> float:
    """`value` summed over the worker group (itself with one worker or without a process group)."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return value
    total = torch.tensor([value], dtype=torch.float64, device=device)
    dist.all_reduce(total)
    return float(total.item())


def _privacy_spent(plan, history: list) -> dict:
    """The summary block of a private method's run; refuses to report a run that overspent."""
    spent = epsilon_spent(history, plan.delta, plan.accountant)
    if spent > plan.epsilon:  # calibration makes this impossible; never report such a run as private
        raise RuntimeError(f"privacy: ε spent {spent:.4f} exceeds the target {plan.epsilon}")
    return plan.summary(history, spent)


# Test hook for jobs no test can hand a FailAt (submitted to a cluster: tests/test_cluster.py), set in the
# environment of the cluster's nodes; see _maybe_hold.
HOLD_ENV = "PALIMPSEST_TEST_HOLD"
HOLD_LIMIT_S = 600.0


def _maybe_hold(task: int, step: int, rank: int) -> None:
    """With $PALIMPSEST_TEST_HOLD=DIR and DIR/at holding "TASK STEP" (0-based, the top of that step: after the
    log line of the steps before it), rank 0 writes DIR/held there and waits until DIR/release exists (at most
    HOLD_LIMIT_S), so a test acts on a job at a known point instead of racing its log."""
    folder = os.environ.get(HOLD_ENV)
    if not folder or rank != 0:
        return
    folder = Path(folder)
    try:
        at = (folder / "at").read_text().split()
    except FileNotFoundError:
        return
    if at != [str(task), str(step)] or (folder / "release").exists():
        return
    (folder / "held").write_text(f"{os.getpid()}\n")
    deadline = time.monotonic() + HOLD_LIMIT_S
    while not (folder / "release").exists() and time.monotonic() < deadline:
        time.sleep(0.1)


def _maybe_inject_failure(fail_at, method: int, task: int, step: int, rank: int) -> None:
    """Test hook: raise once at (method, task, step) on rank 0; a marker file makes the restart pass."""
    if fail_at is None or rank != 0 or (method, task, step) != (fail_at.method, fail_at.task, fail_at.step):
        return
    marker = Path(fail_at.marker)
    if marker.exists():
        return
    marker.write_text("failed once\n")
    raise RuntimeError(f"injected failure at method {method} task {task} step {step}")
