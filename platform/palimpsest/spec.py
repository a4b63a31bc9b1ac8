"""Typed job specs: one pydantic model per job kind, chosen by `kind`.

`load_spec` turns a YAML file (plus `--set a.b=v` overrides) into a typed spec or
raises `SpecError` listing every problem with its field path. This module imports
no torch and no ray so `palimpsest validate` answers in well under a second.
Relative file paths are resolved against the current working directory and stored
absolute in the resolved spec, so a run folder's spec.yaml reruns from anywhere.
"""

from __future__ import annotations

import difflib
import re
from pathlib import Path
from typing import Annotated, Any, Literal, Union, get_args, get_origin

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from palimpsest.presets import MODEL_PRESETS

TOFU_SPLITS = ("forget01", "forget05", "forget10", "retain90", "retain95", "retain99", "retain", "holdout")


class SpecError(ValueError):
    """A job spec is invalid; `problems` holds one readable line per problem."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__("\n".join(problems))


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


def _suggest(word: str, allowed) -> str:
    close = difflib.get_close_matches(str(word), list(allowed), n=1, cutoff=0.6)
    hint = f"; did you mean '{close[0]}'?" if close else ""
    return f"{hint} allowed: {', '.join(allowed)}"


def _existing_path(value: str, what: str) -> str:
    path = Path(value).expanduser()
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
    pretrained: str | None = Field(None, description="local path or hub name for from_pretrained")
    tokenizer: str | None = Field(
        None, description="tokenizer path; default: the pretrained model's own, or a BPE trained on the data"
    )
    vocab_size: int = Field(1024, ge=260, description="BPE vocabulary size when training a tokenizer (256 bytes + 4 special tokens at least)")
    dtype: Literal["float32", "bfloat16"] = Field("float32", description="parameter dtype")
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


DataSpec = Annotated[Union[FactWorldData, FileData, HFData], Field(discriminator="source")]


# ----------------------------------------------------------------------------- training


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
    backend: Literal["ddp"] = Field("ddp", description="ddp (gloo on CPU, NCCL on GPU)")
    log_every: int = Field(10, gt=0, description="steps between train-loss records")
    checkpoint_every: int | None = Field(None, gt=0, description="steps between checkpoints; default: only the last")


class ScalingSpec(Strict):
    """How many Ray Train workers and what each holds."""

    num_workers: int = Field(1, gt=0)
    use_gpu: bool = False
    cpus_per_worker: float = Field(1.0, gt=0)


class EvalSpec(Strict):
    """Evaluation: greedy-answer exact match, teacher-forced token accuracy and loss."""

    eval_every: int | None = Field(None, gt=0, description="steps between evaluations; default: only at the end")
    batch_size: int = Field(64, gt=0)
    max_examples: int | None = Field(None, gt=0, description="cap on examples per evaluated split")
    holdout: bool = Field(True, description="also evaluate held-out facts (fact world: the holdout split)")


class TrainJob(Strict):
    """`kind: train` — fine-tune a model on one dataset and evaluate it."""

    kind: Literal["train"]
    name: str = Field("train", pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$", description="run name (folder prefix)")
    seed: int = Field(0, ge=0, description="seeds data order, model init and the fact world")
    model: ModelSpec = Field(default_factory=ModelSpec)
    data: DataSpec
    training: TrainingSpec = Field(default_factory=TrainingSpec)
    scaling: ScalingSpec = Field(default_factory=ScalingSpec)
    eval: EvalSpec = Field(default_factory=EvalSpec)
    max_failures: int = Field(0, ge=0, description="worker-group restarts from the last checkpoint")
    storage_path: str | None = Field(None, description="Ray storage for training checkpoints; default: inside the run folder")

    @model_validator(mode="after")
    def _batch_divides(self):
        per_step = self.scaling.num_workers * self.training.grad_accum
        if self.training.batch_size % per_step:
            raise ValueError(
                f"training.batch_size: {self.training.batch_size} must be a multiple of "
                f"scaling.num_workers × training.grad_accum ({per_step})"
            )
        return self


# The union grows one kind per capability (continual, unlearn, rl, ...).
JOB_KINDS: dict[str, type[Strict]] = {"train": TrainJob}
JobSpec = TrainJob


# ----------------------------------------------------------------------------- loading


def apply_overrides(document: dict, overrides: list[str]) -> list[str]:
    """Apply `a.b=v` overrides in place (v parsed as YAML); return problems found."""
    problems = []
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key or any(not part for part in key.split(".")):
            problems.append(f"--set {item}: expected KEY.PATH=VALUE")
            continue
        try:
            value = yaml.safe_load(raw) if raw else ""
        except yaml.YAMLError:
            value = raw
        node = document
        parts = key.split(".")
        for part in parts[:-1]:
            if not isinstance(node.get(part), dict):
                node[part] = {}
            node = node[part]
        node[parts[-1]] = value
    return problems


def parse_spec(document: Any, *, origin: str = "spec") -> TrainJob:
    """Validate a parsed YAML document into a typed job spec.

    Raises:
        SpecError: every problem, one line each, as '<origin>: <field.path>: <message>'.
    """
    if not isinstance(document, dict):
        raise SpecError([f"{origin}: expected a mapping of fields at the top level, got {type(document).__name__}"])
    kind = document.get("kind")
    if kind is None:
        raise SpecError([f"{origin}: kind: required field missing; allowed: {', '.join(JOB_KINDS)}"])
    if not isinstance(kind, str) or kind not in JOB_KINDS:
        raise SpecError([f"{origin}: kind: unknown job kind '{kind}'" + _suggest(kind, JOB_KINDS)])
    model_cls = JOB_KINDS[kind]
    try:
        return model_cls.model_validate(document)
    except ValidationError as err:
        raise SpecError([f"{origin}: {line}" for line in _describe(err, model_cls)]) from None


def load_spec(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> TrainJob:
    """Read, override and validate a YAML job spec.

    Raises:
        SpecError: the file is missing, not YAML, or not a valid spec.
    """
    path = Path(path)
    origin = str(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise SpecError([f"{origin}: no such file"]) from None
    except (IsADirectoryError, PermissionError, UnicodeDecodeError) as err:
        raise SpecError([f"{origin}: cannot read: {err.__class__.__name__}"]) from None
    try:
        document = yaml.safe_load(text)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f"line {mark.line + 1}: " if mark is not None else ""
        problem = getattr(err, "problem", None) or "malformed document"
        raise SpecError([f"{origin}: {where}invalid YAML: {problem}"]) from None
    if document is None:
        document = {}
    if isinstance(document, dict):
        problems = apply_overrides(document, list(overrides))
        if problems:
            raise SpecError([f"{origin}: {p}" for p in problems])
    return parse_spec(document, origin=origin)


def dump_spec(spec: BaseModel) -> str:
    """The resolved spec (defaults filled in) as YAML, for the run folder."""
    return yaml.safe_dump(spec.model_dump(mode="json"), sort_keys=False)


# ----------------------------------------------------------------------------- errors


def _models_in(annotation) -> list[type[BaseModel]]:
    """The pydantic models an annotation can hold (through Optional/Union/Annotated/list)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    found = []
    if get_origin(annotation) is not None:
        for arg in get_args(annotation):
            found += _models_in(arg)
    return found


def _walk(model_cls: type[BaseModel], loc: tuple) -> tuple[list[str], list[type[BaseModel]]]:
    """Follow an error location through the spec classes.

    Returns the display path (discriminator tags dropped) and the models that the
    last segment's parent can be (to suggest field names for unknown keys).
    """
    shown: list[str] = []
    current = [model_cls]
    for i, part in enumerate(loc):
        if isinstance(part, int):
            shown.append(f"[{part}]")
            continue
        tagged = [m for m in current if _tag_of(m) == part]
        if tagged and i > 0:
            current = tagged  # a discriminated-union tag, not a field
            continue
        shown.append(str(part))
        if i == len(loc) - 1:
            break
        nxt = []
        for m in current:
            field = m.model_fields.get(part)
            if field is not None:
                nxt += _models_in(field.annotation)
        current = nxt
    return shown, current


def _tag_of(model_cls: type[BaseModel]) -> str | None:
    field = model_cls.model_fields.get("source")
    if field is not None and get_origin(field.annotation) is Literal:
        return get_args(field.annotation)[0]
    return None


def _describe(err: ValidationError, model_cls: type[BaseModel]) -> list[str]:
    lines = []
    for item in err.errors():
        loc = tuple(item["loc"])
        shown, parents = _walk(model_cls, loc)
        path = ".".join(shown).replace(".[", "[") or "(top level)"
        kind = item["type"]
        if kind == "extra_forbidden":
            parent = loc[:-1]
            _, owners = _walk(model_cls, parent + ("_",)) if parent else ([], [model_cls])
            allowed = sorted({f for m in owners for f in m.model_fields})
            message = "unknown key" + _suggest(loc[-1], allowed)
        elif kind == "missing":
            message = "required field missing"
        elif kind == "union_tag_invalid":
            ctx = item.get("ctx", {})
            message = f"unknown source {ctx.get('tag')}; allowed: {ctx.get('expected_tags')}"
        elif kind == "union_tag_not_found":
            message = "missing 'source' (allowed: 'factworld', 'file', 'hf')"
        else:
            message = item["msg"]
            if message.startswith("Value error, "):
                message = message[len("Value error, "):]
            given = item.get("input")
            if kind not in ("value_error", "model_type", "dict_type") and not isinstance(given, (dict, list)):
                message += f" (got {given!r})"
        message = re.sub(r"\s+", " ", message)
        # Cross-field checks raise "field.path: message" from a model validator.
        named = re.match(r"^([a-z_]+(?:\.[a-z_]+)+): (.*)$", message)
        if named and kind == "value_error":
            path = ".".join(p for p in (path if shown else "", named.group(1)) if p and p != "(top level)")
            message = named.group(2)
        lines.append(f"{path}: {message}")
    return lines
