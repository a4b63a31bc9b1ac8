"""`kind: bench` — one side-by-side performance measurement (`jobs/bench/`; `palimpsest bench` runs them all).

Each spec names one `benchmark.type`; every figure it prints is a ratio measured in the
same run against what a user would otherwise use (README, "Benchmarks").
"""

from __future__ import annotations

from typing import Annotated, Literal, Union, get_args

from pydantic import Field, field_validator, model_validator

from palimpsest.spec.base import NAME_PATTERN
from palimpsest.spec.common import LoraSpec, ModelSpec, Strict, _existing_path
from palimpsest.spec.tracking import TrackingSpec



class _LLMBench(Strict):
    """What every LLM benchmark shares: the model, the fact-world data, the batch and the steps timed."""

    model: ModelSpec = Field(default_factory=lambda: ModelSpec(preset="tiny-llama"))
    num_entities: int = Field(100, ge=10, description="fact-world people (the training items)")
    steps: int = Field(40, ge=5, description="optimizer steps per measurement (the first 3 are warm-up, not timed)")
    batch_size: int = Field(32, gt=0, description="global batch")
    lr: float = Field(3e-3, gt=0)
    repeats: int = Field(3, ge=1, description="interleaved repetitions; the best of them is reported")
    threads: int = Field(1, ge=1, description="torch threads per process")


class LoopBench(_LLMBench):
    """Our training loop (no Ray; Ray Train, 1 worker) against a bare PyTorch loop and transformers' Trainer."""

    type: Literal["loop"]
    ray: bool = Field(True, description="also time the loop under Ray Train with one worker")


class DeepSpeedBench(_LLMBench):
    """DeepSpeed ZeRO stages against DDP, same model and global batch, under Ray Train."""

    type: Literal["deepspeed"]
    stages: list[Annotated[int, Field(ge=0, le=3)]] = Field([0, 1, 2, 3], min_length=1)
    workers: int = Field(2, ge=1, description="Ray Train workers (1 CPU each)")

    @model_validator(mode="after")
    def _batch_splits(self):
        if self.batch_size % self.workers:
            raise ValueError(f"batch_size {self.batch_size} must be a multiple of workers ({self.workers})")
        return self


class PrivateBench(_LLMBench):
    """DP-SGD (Opacus) full fine-tuning and DP-LoRA against non-private training."""

    type: Literal["private"]
    modes: list[Literal["hooks", "ghost", "functorch"]] = Field(["hooks", "ghost"], min_length=1,
                                                                description="per-example gradient modes")
    lora: LoraSpec = Field(default_factory=lambda: LoraSpec(r=8), description="the adapters of the LoRA cases")
    lora_mode: Literal["hooks", "ghost", "functorch"] = Field("hooks", description="DP-LoRA's per-example mode")
    epsilon: float = Field(8.0, gt=0)


class UnlearnBench(Strict):
    """Each unlearning method's wall time against retraining on one unlearn job, beside its forget quality."""

    type: Literal["unlearn"]
    job: str = Field(description="an unlearn job spec (path)")
    set: dict[str, object] = Field(default_factory=dict, description="field overrides, as run --set a.b=v")
    dp2u_epsilon: float | None = Field(8.0, gt=0, description="also serve the requests with dp2u from an ε-DP target "
                                                               "(null: skip)")

    @field_validator("job")
    @classmethod
    def _job_exists(cls, value):
        return _existing_path(value, "job spec")


class EnvsBench(Strict):
    """The batched numpy twins and the single Gymnasium env against the nearest POPGym environments."""

    type: Literal["envs"]
    batches: list[Annotated[int, Field(gt=0)]] = Field([1024, 8192], min_length=1)
    batch_steps: int = Field(1000, gt=0, description="batch steps per measurement, timed in the steady state")
    single_steps: int = Field(20000, gt=0, description="single-env steps per measurement")
    repeats: int = Field(3, ge=1)
    popgym: bool = Field(True, description="compare with POPGym (the bench extra); reported as missing if absent")


def _cue_rewrite_defaults() -> dict[str, object]:
    # The environment's own defaults, declared once there; imported when used (it loads gymnasium).
    from palimpsest_envs.cue_rewrite import DEFAULTS

    return dict(DEFAULTS)


class RLlibBench(Strict):
    """Sampled env steps/s per agent with PPO (RLlib, new API stack)."""

    type: Literal["rllib"]
    env: str = "palimpsest/CueRewrite-v0"
    env_params: dict[str, object] = Field(default_factory=_cue_rewrite_defaults)
    agents: list[str] = Field(["mlp", "lstm", "gru", "gtrxl", "ffm", "shm", "slots"], min_length=1)
    parameters: int = Field(34000, gt=0, description="the agents' parameter budget")
    iterations: int = Field(3, ge=2, description="PPO iterations timed per agent (the first is warm-up)")
    train_batch_size: int = Field(512, gt=0)
    num_envs_per_env_runner: int = Field(8, gt=0)


class PPOBench(Strict):
    """PPO env steps/s with learning: a trial's RLlib PPO on the batched twin against a bare PyTorch loop (the same
    agent, twin, batch and epochs, no Ray) and against RLlib on single envs."""

    type: Literal["ppo"]
    env: str = "palimpsest/EndlessTMaze-v0"
    env_params: dict[str, object] = Field(default_factory=lambda: {"num_corridors": 3, "corridor_length": 5})
    agents: list[str] = Field(["lstm", "gtrxl"], min_length=1)
    parameters: int = Field(34000, gt=0, description="the agents' parameter budget")
    iterations: int = Field(3, ge=2, description="PPO iterations timed per case (the first is warm-up)")
    repeats: int = Field(2, ge=1, description="interleaved repetitions; the best is reported")
    train_batch_size: int = Field(4096, gt=0)
    minibatch_size: int = Field(1024, gt=0)
    num_epochs: int = Field(4, ge=1)
    max_seq_len: int = Field(16, ge=1)
    lr: float = Field(3e-3, gt=0)
    num_envs: int = Field(64, gt=0, description="sub-envs per env runner")


_KINDS = (LoopBench, DeepSpeedBench, PrivateBench, UnlearnBench, EnvsBench, RLlibBench, PPOBench)
Benchmark = Annotated[Union[_KINDS], Field(discriminator="type")]
BENCH_TYPES = tuple(get_args(kind.model_fields["type"].annotation)[0] for kind in _KINDS)


class BenchJob(Strict):
    """`kind: bench` — benchmarks measured side by side, one after another; writes bench.json and a plot.

    `palimpsest bench jobs/bench` runs the benchmarks of every spec in a folder as one job.
    """

    kind: Literal["bench"]
    name: str = Field("bench", pattern=NAME_PATTERN, description="run name (folder prefix)")
    seed: int = Field(0, ge=0)
    benchmarks: list[Benchmark] = Field(min_length=1, description="what to measure, in order")
    tracking: TrackingSpec | None = Field(None, description="experiment tracking: MLflow, TensorBoard, W&B "
                                                          "(docs/tracking.md)")

    @property
    def scaling(self):
        """What Ray must hold: the largest worker group of any benchmark."""
        from palimpsest.spec.common import ScalingSpec

        return ScalingSpec(num_workers=max(getattr(b, "workers", 1) for b in self.benchmarks))
