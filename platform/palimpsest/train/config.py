"""The runner → loop contract: one typed, picklable structure, built in one place per job kind.

Ray hands it to every worker unchanged; `run_without_ray` takes the same object.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field, replace
from typing import Literal

from palimpsest.train.batching import TokenizedQA


@dataclass(frozen=True)
class Optimisation:
    """How each task is trained (the spec's `training` section)."""

    steps: int  # optimizer steps per task
    batch_size: int  # global: all workers and accumulation steps (a method's parts may add to it)
    grad_accum: int = 1
    lr: float = 3e-3
    weight_decay: float = 0.0
    warmup_steps: int = 0
    lr_schedule: str = "cosine"
    max_grad_norm: float | None = 1.0
    backend: str = "ddp"
    zero_stage: int = 2
    precision: str = "fp32"  # auto | bf16 | fp16 | fp32 (the backend resolves auto on its device)
    activation_checkpointing: bool = False
    compile: bool = False
    packing: bool = False
    packing_row_tokens: int = 2048
    log_every: int = 10
    checkpoint_every: int | None = None


@dataclass(frozen=True)
class Evaluation:
    """What is evaluated, when."""

    every: int | None = None  # steps between periodic evaluations; None: task ends only
    batch_size: int = 64
    periodic: Literal["all", "seen"] = "all"  # all eval sets, or the seen tasks' (continual evaluation)
    # Evaluate a model before any training (FWT's b): the model the run starts from, or a
    # random init of the same architecture (GEM's definition; differs for pretrained models).
    baseline: Literal["initial", "random_init"] | None = None


@dataclass(frozen=True)
class MethodRun:
    """A method to run: where its code is and its resolved parameters.

    The optional fields override the run's for this method alone: its own optimisation
    (unlearning's `retrain` trains with the original training recipe, not the unlearning
    one), the model it starts from, and the first task (earlier ones were done by an
    earlier run: unlearning requests a ledger records as served).
    """

    name: str
    module: str
    implementation: str
    params: dict = field(default_factory=dict)
    optimisation: Optimisation | None = None
    model: dict | None = None
    first_task: int = 0

    def build(self):
        module = importlib.import_module(self.module)
        return getattr(module, self.implementation)(**self.params)


NAIVE = MethodRun("naive", "palimpsest.train.hooks", "TrainingMethod")


@dataclass
class TaskEnd:
    """What `LoopConfig.task_end` is told at the end of a task (rank 0 only)."""

    method: str
    task: int
    model: object  # the unwrapped model with the task's final weights
    steps: int
    train_tokens: int  # of this task
    wall_s: float  # of this task (summed over attempts)
    parameters: dict
    train_flops: float = 0.0  # of this task: every model call the method made, on every rank (`train.flops`)


@dataclass(frozen=True)
class FailAt:
    """Test hook: raise once at (method, task, step) on rank 0; `marker` makes the restart pass."""

    task: int
    step: int
    marker: str
    method: int = 0


@dataclass
class LoopConfig:
    """Everything a worker needs: model, data as token ids, optimisation, evaluation, methods."""

    seed: int
    model: dict  # `palimpsest.models.model_config(...)`
    optimisation: Optimisation
    evaluation: Evaluation
    tasks: list[list[TokenizedQA]]
    eval_sets: dict[str, list[TokenizedQA]]
    # Per task, the eval set that measures it (continual evaluation and the accuracy matrix).
    task_eval_names: list[str] | None = None
    general: list[TokenizedQA] = field(default_factory=list)  # trainable general samples (GeRe)
    # Named pools methods may train on, one list per task (unlearning: "retain", what
    # remains after each forget request). Never evaluation sets.
    pools: dict[str, list[list[TokenizedQA]]] = field(default_factory=dict)
    # Named models a method may start a task from (`LoopContext.fresh_model`).
    models: dict[str, dict] = field(default_factory=dict)
    # Called on rank 0 at each task end, after the method's after_task and before the
    # task-end checkpoint, with a `TaskEnd`; returns metrics.jsonl rows (unlearning:
    # TOFU metrics per request and the ledger's `done`). Must be picklable.
    task_end: object | None = None
    methods: list[MethodRun] = field(default_factory=lambda: [NAIVE])
    privacy: object | None = None  # a `palimpsest.privacy.PrivacyPlan`: train with DP-SGD
    # privacy.unit person: per task, the item indices of each person (`palimpsest.privacy.people_of`)
    task_people: list[list[list[int]]] | None = None
    threads: int = 1
    resume_from: str | None = None
    fail_at: FailAt | None = None
    stage: str = ""  # which of a job's fits this is (runners/common.fit): named in progress lines

    def __post_init__(self):
        if self.task_eval_names is not None and len(self.task_eval_names) != len(self.tasks):
            raise ValueError("task_eval_names: one name per task")
        missing = [n for n in (self.task_eval_names or []) if n not in self.eval_sets]
        if missing:
            raise ValueError(f"task_eval_names: no eval set named {missing}")
        if not self.methods:
            raise ValueError("methods: at least one")
        uneven = [name for name, per_task in self.pools.items() if len(per_task) != len(self.tasks)]
        if uneven:
            raise ValueError(f"pools {uneven}: one list per task")
        late = [m.name for m in self.methods if not 0 <= m.first_task <= len(self.tasks)]
        if late:
            raise ValueError(f"methods {late}: first_task must be within the tasks")

    def optimisation_of(self, method: MethodRun) -> Optimisation:
        return method.optimisation or self.optimisation

    def model_of(self, method: MethodRun) -> dict:
        return method.model or self.model

    def with_(self, **changes) -> "LoopConfig":
        return replace(self, **changes)
