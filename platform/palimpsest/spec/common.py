"""Spec sections shared by the job kinds: model, data, training, scaling, evaluation.

Relative file paths are resolved against the current working directory and stored
absolute in the resolved spec, so a run folder's spec.yaml reruns from anywhere.
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Annotated, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from palimpsest.presets import MODEL_PRESETS

TOFU_SPLITS = ("forget01", "forget05", "forget10", "retain90", "retain95", "retain99", "retain", "holdout")


class SpecError(ValueError):
    """A job spec is invalid; `problems` holds one readable line per problem."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__("\n".join(problems))


class Strict(BaseModel):
    # strict: no silent coercion — `steps: yes` is an error, not 1 (YAML reads yes/no/on/off
    # as booleans). An int is still a valid float, and YAML 1.2 numbers such as 1e-3 load as
    # floats (spec/loading.py), so only values of the wrong kind are refused.
    model_config = ConfigDict(extra="forbid", validate_assignment=True, strict=True)


def _suggest(word: str, allowed) -> str:
    close = difflib.get_close_matches(str(word), list(allowed), n=1, cutoff=0.6)
    hint = f"; did you mean '{close[0]}'?" if close else ""
    return f"{hint} allowed: {', '.join(allowed)}"


DATA_FILE_SUFFIXES = (".json", ".jsonl", ".parquet", ".csv", ".tsv", ".txt", ".arrow", ".gz", ".bz2", ".xz", ".zst",
                      ".zip")


def _looks_local(value: str) -> bool:
    """A path on this machine rather than a name for `datasets` to look up: ./x, /x, ~/x or x.jsonl."""
    return value.startswith((".", "/", "~")) or Path(value).suffix.lower() in DATA_FILE_SUFFIXES


def _existing_path(value: str, what: str) -> str:
    try:
        path = Path(value).expanduser()
    except RuntimeError:  # "~user/..." for a user that does not exist
        raise ValueError(f"{what} not found: {value}") from None
    if not path.exists():
        raise ValueError(f"{what} not found: {value}")
    return str(path.resolve())


# ----------------------------------------------------------------------------- model


class LoraSpec(Strict):
    """LoRA adapters through peft (Hu et al., "LoRA", 2021)."""

    r: int = Field(8, gt=0, description="adapter rank")
    alpha: float = Field(16.0, gt=0, description="scaling numerator (lora_alpha)")
    dropout: float = Field(0.0, ge=0, lt=1, description="dropout on the adapter input")
    target_modules: list[str] = Field(
        default_factory=lambda: ["q_proj", "v_proj"], min_length=1, description="module names to adapt"
    )


class ModelSpec(Strict):
    """Which model to train: a preset built from a config, or a from_pretrained path."""

    preset: str | None = Field(None, description=f"random-init preset: {', '.join(MODEL_PRESETS)}")
    pretrained: str | None = Field(None, min_length=1, description="local path or hub name for from_pretrained")
    tokenizer: str | None = Field(
        None, min_length=1, description="tokenizer path; default: the pretrained model's own, or a BPE trained on the data"
    )
    vocab_size: int = Field(1024, ge=260, description="BPE vocabulary size when training a tokenizer (256 bytes + 4 special tokens at least)")
    dtype: Literal["float32", "bfloat16"] = Field("float32", description="parameter dtype")
    attn_implementation: Literal["sdpa", "eager", "flash_attention_2"] = Field(
        "sdpa", description="transformers' attention kernel: sdpa (torch's scaled_dot_product_attention; "
                            "flash or memory-efficient kernels on GPU), eager (the reference Python "
                            "attention), or flash_attention_2 (the flash-attn package, on GPU at bf16/fp16)")
    lora: LoraSpec | None = Field(None, description="train LoRA adapters instead of all weights")

    @field_validator("preset")
    @classmethod
    def _known_preset(cls, value):
        if value is not None and value not in MODEL_PRESETS:
            raise ValueError(f"unknown model preset '{value}'" + _suggest(value, MODEL_PRESETS))
        return value

    @field_validator("pretrained", "tokenizer")
    @classmethod
    def _local_path_exists(cls, value):
        # A hub name ("org/model") cannot be checked offline; a path that looks local can.
        if value is not None and (value.startswith((".", "/", "~")) or Path(value).exists()):
            return _existing_path(value, "model path")
        return value

    @model_validator(mode="after")
    def _one_source(self):
        if self.preset is not None and self.pretrained is not None:
            raise ValueError("give either model.preset or model.pretrained, not both")
        if self.preset is None and self.pretrained is None:
            self.preset = "tiny-llama"
        return self


# ----------------------------------------------------------------------------- data


class FactWorldData(Strict):
    """Facts about fictitious entities from the seeded fact-world generator."""

    source: Literal["factworld"]
    seed: int | None = Field(None, description="world seed; default: the job's seed")
    num_entities: int = Field(20, ge=1, le=100_000, description="number of fictitious entities")
    attributes_per_entity: int = Field(5, ge=1, le=8, description="facts per entity")
    split: str = Field("all", description=f"'all' or a TOFU split: {', '.join(TOFU_SPLITS)}")
    rules: int = Field(0, ge=0, le=3, description="rule facts per entity (country from city, workplace from "
                                                  "profession, language from city): learnable from many people "
                                                  "and true of held-out people; the summary's rule_accuracy "
                                                  "scores them on people never trained on")

    @field_validator("split")
    @classmethod
    def _known_split(cls, value):
        allowed = ("all",) + TOFU_SPLITS
        if value not in allowed:
            raise ValueError(f"unknown split '{value}'" + _suggest(value, allowed))
        return value


class FileData(Strict):
    """Question/answer records from a local JSON, JSON Lines or parquet file."""

    source: Literal["file"]
    path: str = Field(description="training file (.json, .jsonl or .parquet)")
    eval_path: str | None = Field(None, description="optional held-out file evaluated beside the training set")
    question_key: str = "question"
    answer_key: str = "answer"
    person_field: str | None = Field(None, description="record key naming the person an example is about "
                                                       "(privacy.unit: person); default: entity, author or person "
                                                       "when present")

    @field_validator("path", "eval_path")
    @classmethod
    def _file_exists(cls, value):
        return None if value is None else _existing_path(value, "data file")


class HFData(Strict):
    """A dataset loaded with `datasets.load_dataset(name, subset, split=...)`."""

    source: Literal["hf"]
    name: str = Field(min_length=1, description="dataset name or builder ('json', 'parquet', ...)")
    subset: str | None = None
    split: str = "train"
    eval_split: str | None = None
    data_files: str | list[str] | None = None
    question_key: str = "question"
    answer_key: str = "answer"
    person_field: str | None = Field(None, description="column naming the person an example is about "
                                                       "(privacy.unit: person); default: entity, author or person "
                                                       "when present")

    @field_validator("data_files")
    @classmethod
    def _absolute_local_files(cls, value):
        # Stored absolute (like every path in a resolved spec) so the run folder reruns anywhere.
        # A name that looks like a local file must exist; globs and URLs are left to `datasets`.
        def resolve(item: str) -> str:
            if any(c in item for c in "*?[") or "://" in item:
                return item
            if _looks_local(item) or Path(item).exists():
                return _existing_path(item, "data file")
            return item

        if value is None:
            return None
        return resolve(value) if isinstance(value, str) else [resolve(v) for v in value]


DataSpec = Annotated[Union[FactWorldData, FileData, HFData], Field(discriminator="source")]


# ----------------------------------------------------------------------------- training


class DeepSpeedSpec(Strict):
    """DeepSpeed ZeRO settings (torch AdamW as the client optimizer: no compile step on CPU)."""

    zero_stage: int = Field(2, ge=0, le=3, description="ZeRO stage 0-3 (3 also partitions the weights)")
    precision: Literal["fp32", "bf16"] | None = Field(
        None, description="the older name of training.precision (kept so older jobs run); give training.precision")


PRECISIONS = ("auto", "bf16", "fp16", "fp32")


class TrainingSpec(Strict):
    """Optimisation settings of the shared training loop."""

    steps: int = Field(300, gt=0, description="optimizer steps")
    batch_size: int = Field(32, gt=0, description="global batch (all workers, all accumulation steps)")
    grad_accum: int = Field(1, gt=0, description="gradient accumulation steps")
    lr: float = Field(3e-3, gt=0, description="peak learning rate (AdamW)")
    weight_decay: float = Field(0.0, ge=0)
    warmup_steps: int = Field(0, ge=0)
    lr_schedule: Literal["constant", "linear", "cosine"] = "cosine"
    max_grad_norm: float | None = Field(1.0, gt=0, description="clip the global gradient norm; null: no clipping")
    backend: Literal["ddp", "deepspeed"] = Field("ddp", description="ddp (gloo on CPU, NCCL on GPU) or deepspeed")
    deepspeed: DeepSpeedSpec = Field(default_factory=DeepSpeedSpec, description="used when backend is deepspeed")
    log_every: int = Field(10, gt=0, description="steps between train-loss records")
    checkpoint_every: int | None = Field(None, gt=0, description="steps between checkpoints; default: only the last")
    precision: Literal[PRECISIONS] = Field(
        "auto", description="auto: bf16 mixed precision on a GPU that has it, fp32 elsewhere (CPU, and DP-SGD); "
                            "bf16 / fp16: autocast with fp32 master weights (fp16 with a loss scaler; DeepSpeed: "
                            "its own bf16 / fp16 modes); fp32: no autocast")
    activation_checkpointing: bool = Field(
        False, description="recompute each decoder layer's activations in the backward pass (less memory, about "
                           "a third more compute)")
    compile: bool = Field(False, description="torch.compile the model (in place; recompiles bounded by "
                                             "COMPILE_RECOMPILE_LIMIT, then eager)")
    packing: bool = Field(
        False, description="concatenate each micro-batch's examples into rows (own position ids, no attention "
                           "across examples): no FLOP on padding, the same per-example losses. Not with privacy "
                           "(one example per row) nor with methods that read the model's outputs by row")
    packing_row_tokens: int = Field(2048, gt=0, description="tokens a packed row holds at most (a longer example "
                                                            "gets a row of its own)")

    @model_validator(mode="after")
    def _one_precision(self):
        older = self.deepspeed.precision
        if older is not None and self.precision not in ("auto", older):
            raise ValueError(f"precision is {self.precision} but deepspeed.precision (its older name) is {older}: "
                             "give precision only")
        if older is not None:  # moved to its one place (no assignment validation: it would run this again)
            self.__dict__["precision"] = older
            self.deepspeed.__dict__["precision"] = None
        return self


class PrivacySettings(Strict):
    """How DP-SGD runs (Opacus), apart from the budget ε."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, strict=True, allow_inf_nan=False)

    delta: float | None = Field(None, gt=0, lt=1, description="δ; default 1/(10·N) for N training examples; "
                                                              "must be below 1/N")
    max_grad_norm: float = Field(1.0, gt=0, description="per-example gradient clipping norm C")
    accountant: Literal["prv", "rdp"] = Field("prv", description="Opacus accountant: prv (tighter) or rdp")
    grad_sample_mode: Literal["hooks", "ghost", "functorch", "ghost_fsdp"] = Field(
        "hooks", description="per-example gradients: hooks, functorch, ghost clipping (no per-example gradients "
                             "stored), or ghost_fsdp (ghost clipping on FSDP2-sharded weights, 2+ workers)")
    unit: Literal["example", "person"] = Field(
        "example", description="what the guarantee protects. example: each training example (a person with k "
                               "facts gets about kε); person: each person — every step Poisson-samples people "
                               "(q = batch_size / people) and trains on one of each sampled person's examples, "
                               "so one clipped gradient per person bounds their contribution; the accountant and "
                               "δ count people. Needs each example's person (fact world: its entity; files: "
                               "data.person_field)")
    reproducible: bool = Field(
        False, description="draw the noise and the Poisson batches from the job's public seed, so a rerun "
                           "gives the same weights. VOIDS the guarantee: anyone with the seed and the data "
                           "recomputes the noise. Default: a fresh 256-bit secret per run, kept only in the "
                           "run's Ray checkpoints (owner-only), so restarts and --resume still replay exactly")


class PrivacySpec(PrivacySettings):
    """(ε, δ)-DP training with DP-SGD through Opacus: per-example clipping, Gaussian noise, Poisson batches."""

    epsilon: float = Field(gt=0, description="the privacy budget ε over the whole run (never exceeded)")


WAIT_TIMEOUT_S = 900.0  # 15 minutes: a cloud node boots, installs and joins in 5-10


class WaitSpec(Strict):
    """How long a job waits for the cluster's autoscaler to start the nodes it needs."""

    wait_timeout_s: float = Field(WAIT_TIMEOUT_S, gt=0, description="seconds to wait for the autoscaler to start "
                                  "nodes that hold the job (a cluster without an autoscaler is checked at once)")


class ScalingSpec(WaitSpec):
    """How many Ray Train workers and what each holds (Ray Train's ScalingConfig)."""

    num_workers: int = Field(1, gt=0)
    use_gpu: bool = Field(False, description="each worker holds gpus_per_worker GPUs and trains on its GPU")
    cpus_per_worker: float = Field(1.0, gt=0)
    gpus_per_worker: float = Field(1.0, gt=0, description="GPUs per worker with use_gpu (a fraction shares one)")
    resources_per_worker: dict[str, float] = Field(default_factory=dict, description="further Ray resources each "
                                                   "worker holds, e.g. {\"accelerator_type:H100\": 0.001} (CPU and "
                                                   "GPU are set by cpus_per_worker and use_gpu)")

    @field_validator("resources_per_worker")
    @classmethod
    def _custom_only(cls, value: dict[str, float]) -> dict[str, float]:
        for name, amount in value.items():
            if name in ("CPU", "GPU"):
                field = "cpus_per_worker" if name == "CPU" else "use_gpu and gpus_per_worker"
                raise ValueError(f"{name}: set by {field}, not here")
            if amount < 0:
                raise ValueError(f"{name}: {amount:g} is negative")
        return value

    def worker_resources(self) -> dict[str, float]:
        """What one Ray Train worker holds: Ray Train's resources_per_worker."""
        return {"CPU": self.cpus_per_worker, **({"GPU": self.gpus_per_worker} if self.use_gpu else {}),
                **self.resources_per_worker}


class EvalSpec(Strict):
    """Evaluation: greedy-answer exact match, teacher-forced token accuracy and loss."""

    eval_every: int | None = Field(None, gt=0, description="steps between evaluations; default: only at the end")
    batch_size: int = Field(64, gt=0)
    max_examples: int | None = Field(None, gt=0, description="cap on examples per evaluated split")
    holdout: bool = Field(True, description="also evaluate held-out facts (fact world: the holdout split)")


def void_guarantees(spec) -> list[str]:
    """Field paths of every `privacy` section that opts into the public seed (`reproducible: true`).

    Such a section trains with DP-SGD, but its noise and batches derive from the seed in
    spec.yaml: anyone with it and the data recomputes them, so the run guarantees nothing.
    """
    found = []

    def walk(node, path: str) -> None:
        if isinstance(node, PrivacySettings):
            if node.reproducible:
                found.append(f"{path}.reproducible" if path else "reproducible")
            return
        if isinstance(node, BaseModel):
            for name in type(node).model_fields:
                walk(getattr(node, name), f"{path}.{name}" if path else name)
        elif isinstance(node, (list, tuple)):
            for i, item in enumerate(node):
                walk(item, f"{path}[{i}]")

    walk(spec, "")
    return found


GUARANTEE_NONE = "none: noise and batches derive from the public seed"  # summary.json → privacy.guarantee
GUARANTEE_VOID_WARNING = ("true: the noise and Poisson batches derive from the public seed, so the printed ε "
                          f"guarantees nothing (privacy.guarantee: {GUARANTEE_NONE}); leave it false for a model "
                          "you release")
