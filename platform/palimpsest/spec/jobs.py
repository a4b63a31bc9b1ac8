"""Job specs, one model per kind; `JOB_KINDS` is the union, grown one kind per capability.

Field-level rules live on the models. Rules that tie sections together (batch
divisibility, a method's parameters and the backends it runs on, what a method needs
from the stream) live in `cross_problems`, which checks every section that is valid on
its own — so `validate` reports them all at once, next to any field error.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal, Union

from pydantic import BaseModel, Field, ValidationError, field_validator, model_validator

from palimpsest.catalog import methods_of
from palimpsest.spec.common import (
    DataSpec, EvalSpec, FileData, HFData, ModelSpec, PrivacySettings, PrivacySpec, ScalingSpec, Strict, TrainingSpec, _existing_path,
    _suggest,
)

NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]*$"


class _Job(Strict):
    name: str = Field("run", pattern=NAME_PATTERN, description="run name (folder prefix)")
    seed: int = Field(0, ge=0, description="seeds data order, model init and the fact world")
    model: ModelSpec = Field(default_factory=ModelSpec)
    training: TrainingSpec = Field(default_factory=TrainingSpec)
    scaling: ScalingSpec = Field(default_factory=ScalingSpec)
    eval: EvalSpec = Field(default_factory=EvalSpec)
    max_failures: int = Field(0, ge=0, description="worker-group restarts from the last checkpoint")
    storage_path: str | None = Field(None, description="Ray storage for training checkpoints; default: inside the run folder")


def _private_clipping(job):
    """A private job clips per example (privacy.max_grad_norm): its resolved spec says there is no global clipping."""
    if job.privacy is not None and job.training.max_grad_norm is not None:
        job.training.max_grad_norm = None
    return job


class TrainJob(_Job):
    """`kind: train` — fine-tune a model on one dataset and evaluate it."""

    kind: Literal["train"]
    name: str = Field("train", pattern=NAME_PATTERN, description="run name (folder prefix)")
    data: DataSpec
    privacy: PrivacySpec | None = Field(None, description="train with (ε, δ)-DP (DP-SGD); default: not private")

    _no_global_clipping = model_validator(mode="after")(lambda self: _private_clipping(self))


# ----------------------------------------------------------------------------- continual


class FactWorldStream(Strict):
    """A stream of fact-world tasks: disjoint groups of entities (or of attributes)."""

    source: Literal["factworld"]
    seed: int | None = Field(None, description="world seed; default: the job's seed")
    num_entities: int = Field(30, ge=2, le=100_000)
    attributes_per_entity: int = Field(5, ge=1, le=10)
    num_tasks: int = Field(3, ge=1, le=100)
    by: Literal["entity", "attribute"] = "entity"
    general_samples: int = Field(64, ge=0, description="general sentences never trained on: the general loss")
    general_replay_samples: int = Field(64, ge=0, description="other general sentences methods may train on (GeRe)")

    @model_validator(mode="after")
    def _enough_groups(self):
        groups = self.num_entities if self.by == "entity" else self.attributes_per_entity
        if self.num_tasks > groups:
            raise ValueError(f"num_tasks: {self.num_tasks} tasks need at least as many {self.by} groups "
                             f"(have {groups})")
        return self


class DatasetsStream(Strict):
    """One dataset per task: local files or `datasets.load_dataset` names, each with its own eval set."""

    source: Literal["datasets"]
    tasks: list[Annotated[Union[FileData, HFData], Field(discriminator="source")]] = Field(min_length=1)
    eval_on_train: bool = Field(False, description="measure R on a task's training examples when it has no "
                                                   "eval_path / eval_split (GEM's R is test accuracy)")
    general_path: str | None = Field(None, description="text file, one general sentence per line; split into "
                                                       "replay and evaluation halves unless general_eval_path is given")
    general_eval_path: str | None = Field(None, description="general sentences for the general loss only")

    @field_validator("general_path", "general_eval_path")
    @classmethod
    def _exists(cls, value):
        return None if value is None else _existing_path(value, "general text file")

    @model_validator(mode="after")
    def _eval_sets(self):
        missing = [i for i, task in enumerate(self.tasks)
                   if not (task.eval_path if task.source == "file" else task.eval_split)]
        if missing and not self.eval_on_train:
            raise ValueError(f"tasks {missing} have no eval set; give each an eval_path (file) or eval_split (hf), or "
                             "set stream.eval_on_train: true to measure them on their training examples")
        return self


StreamSpec = Annotated[Union[FactWorldStream, DatasetsStream], Field(discriminator="source")]


class MethodSpec(Strict):
    """A continual-learning method by registered name, with its parameters."""

    family: ClassVar[str] = "continual"
    name: str
    params: dict[str, Any] = Field(default_factory=dict, description="the method's parameters (see README)")

    @field_validator("name")
    @classmethod
    def _known(cls, value):
        known = methods_of(cls.family)
        if value not in known:
            raise ValueError(f"unknown {cls.family} method '{value}'" + _suggest(value, list(known)))
        return value


def _method_entry(value):
    return {"name": value} if isinstance(value, str) else value


def _method_entries(value):
    """`methods: [npo, {name: rmu, params: ...}]`: a bare name is a mapping with defaults."""
    return [_method_entry(v) for v in value] if isinstance(value, list) else value


class ContinualEvalSpec(EvalSpec):
    """Continual evaluation: seen tasks every `eval_every` steps (min-ACC, WC-ACC), every task at task ends."""

    eval_every: int | Literal["auto"] | None = Field(
        "auto", description="steps between evaluations of the seen tasks; auto: a tenth of a task; null: task ends "
                            "only (min-ACC and WC-ACC are then not measured)")
    fwt_baseline: Literal["random_init", "initial"] = Field(
        "random_init", description="FWT's b: a random init of the architecture (GEM) or the model the run starts "
                                   "from (differs for pretrained models)")

    @field_validator("eval_every")
    @classmethod
    def _positive(cls, value):
        if isinstance(value, int) and (isinstance(value, bool) or value < 1):
            raise ValueError("must be a positive integer, 'auto' or null")
        return value


class ContinualJob(_Job):
    """`kind: continual` — fine-tune on a stream of tasks with one or more CL methods; measure forgetting."""

    kind: Literal["continual"]
    name: str = Field("continual", pattern=NAME_PATTERN, description="run name (folder prefix)")
    stream: StreamSpec
    methods: list[MethodSpec] = Field(min_length=1, description="compared on the same stream and seed")
    eval: ContinualEvalSpec = Field(default_factory=ContinualEvalSpec)
    privacy: PrivacySpec | None = Field(None, description="(ε, δ)-DP over the whole stream (DP-SGD); default: "
                                                          "not private")

    _names_or_mappings = field_validator("methods", mode="before")(lambda value: _method_entries(value))

    _no_global_clipping = model_validator(mode="after")(lambda self: _private_clipping(self))

    @model_validator(mode="after")
    def _resolve_auto(self):
        if self.eval.eval_every == "auto":  # the resolved spec shows the number
            self.eval.eval_every = max(1, self.training.steps // 10)
        return self


# ----------------------------------------------------------------------------- privacy sweep


class PrivacySweepJob(Strict):
    """`kind: privacy_sweep` — one train job at several ε (null: not private): MIA AUC and accuracy against ε."""

    kind: Literal["privacy_sweep"]
    name: str = Field("privacy-sweep", pattern=NAME_PATTERN, description="run name (folder prefix)")
    job: TrainJob = Field(description="the train job run at every ε (without a privacy section)")
    privacy: PrivacySettings = Field(default_factory=PrivacySettings, description="DP-SGD settings shared by "
                                                                                  "every private point")
    epsilons: list[Annotated[float, Field(gt=0, allow_inf_nan=False)] | None] = Field(
        min_length=1, description="the budgets to train at; null trains without privacy (the reference point)")

    @field_validator("epsilons")
    @classmethod
    def _distinct(cls, value):
        if len(set(value)) != len(value):
            raise ValueError("each ε once")
        return value

    @field_validator("job")
    @classmethod
    def _no_privacy(cls, value):
        if value.privacy is not None:
            raise ValueError("give the DP settings in the sweep's privacy section and the budgets in epsilons, "
                             "not in job.privacy")
        return value

    # What the CLI reads of any job: the inner job's.
    seed = property(lambda self: self.job.seed)
    scaling = property(lambda self: self.job.scaling)
    storage_path = property(lambda self: self.job.storage_path)

    def points(self) -> list[tuple[str, float | None, dict]]:
        """(label, ε, train-job document) per point, in the order given."""
        found = []
        for epsilon in self.epsilons:
            document = self.job.model_dump(mode="json")
            if epsilon is not None:  # per-example clipping replaces the job's global clipping
                document["privacy"] = {**self.privacy.model_dump(), "epsilon": epsilon}
                document["training"]["max_grad_norm"] = None
            found.append(("not-private" if epsilon is None else f"epsilon-{epsilon:g}", epsilon, document))
        return found


# ----------------------------------------------------------------------------- unlearn

REQUEST_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]*$"


class UnlearnFactWorld(Strict):
    """The fact world's TOFU-format splits: a 10% holdout, the rest trained on and forgotten from."""

    source: Literal["factworld"]
    seed: int | None = Field(None, description="world seed; default: the job's seed")
    num_entities: int = Field(100, ge=3, le=100_000, description="fictitious people (10% are the holdout)")
    attributes_per_entity: int = Field(2, ge=1, le=8, description="facts per person")


class UnlearnFiles(Strict):
    """TOFU-format files in one folder: `<name>.json` (JSON Lines or a JSON list), TOFU's field names.

    The target trains on `full` (else on the union of every forget*/retain* file); a
    request's forget set is `<split>.json`, evaluated with `<split>_perturbed.json` when it
    exists (TOFU keeps the paraphrased and perturbed answers there); the retain side is
    evaluated on `retain_perturbed` when it exists; `holdout` names the never-trained split.
    """

    source: Literal["tofu"]
    path: str = Field(description="folder of TOFU-format .json / .jsonl files")
    holdout: str = Field("holdout10", description="the file (without .json) of people never trained on")

    @field_validator("path")
    @classmethod
    def _folder(cls, value):
        found = _existing_path(value, "TOFU data folder")
        if not Path(found).is_dir():
            raise ValueError(f"TOFU data folder: {value} is not a folder")
        return found


UnlearnData = Annotated[Union[UnlearnFactWorld, UnlearnFiles], Field(discriminator="source")]


class ForgetRequest(Strict):
    """One forget request: an id the ledger knows it by, and its items (exactly one of split, percent, path)."""

    id: str = Field(pattern=REQUEST_ID_PATTERN, description="the ledger's key for this request")
    split: str | None = Field(None, description="fact world: forget01 / forget05 / forget10; tofu: a file name")
    percent: int | None = Field(None, ge=1, le=90, description="fact world: the next N% of the trainable people "
                                                               "no earlier request named (forget01, then the next 1%...)")
    path: str | None = Field(None, description="a TOFU-format file of items to forget (each must be trained on)")

    @field_validator("path")
    @classmethod
    def _exists(cls, value):
        return None if value is None else _existing_path(value, "request file")

    @model_validator(mode="after")
    def _one_source(self):
        given = [name for name in ("split", "percent", "path") if getattr(self, name) is not None]
        if len(given) != 1:
            raise ValueError(f"give exactly one of split, percent or path (got {', '.join(given) or 'none'})")
        return self


class TargetSpec(Strict):
    """How the target (forget ∪ retain) and the retain models are trained: the same recipe for both."""

    training: TrainingSpec = Field(default_factory=TrainingSpec)
    privacy: PrivacySpec | None = Field(None, description="train the target with (ε, δ)-DP (dp2u needs it); the "
                                                          "retain models are never private")

    _no_global_clipping = model_validator(mode="after")(lambda self: _private_clipping(self))


class UnlearnMethodSpec(MethodSpec):
    """An unlearning method by registered name, with its parameters; `gu` adds GU's projection."""

    family: ClassVar[str] = "unlearning"

    gu: bool = Field(False, description="project the forget gradient orthogonal to retain gradients (GU)")
    gu_samples: int = Field(8, ge=1, le=256, description="retain items whose gradients GU projects out, per step")

    @property
    def label(self) -> str:
        return f"{self.name}+gu" if self.gu else self.name


class UnlearnJob(_Job):
    """`kind: unlearn` — train a target, serve a sequence of forget requests with each method, compare to retraining."""

    kind: Literal["unlearn"]
    name: str = Field("unlearn", pattern=NAME_PATTERN, description="run name (folder prefix)")
    data: UnlearnData
    target: TargetSpec = Field(default_factory=TargetSpec)
    requests: list[ForgetRequest] = Field(default_factory=lambda: [ForgetRequest(id="forget10", split="forget10")],
                                          min_length=1, description="forget requests, served in order")
    methods: list[UnlearnMethodSpec] = Field(min_length=1, description="each serves every request, from the target")
    ledger: str | None = Field(None, description="the request ledger (JSON Lines); default: ledger.jsonl in the run "
                                                 "folder. Name a path to keep it across runs")
    cache: str | None = Field(None, description="where trained target and retain models are kept for reuse, by "
                                                "content hash; default: .palimpsest-cache in the current folder")

    _names_or_mappings = field_validator("methods", mode="before")(lambda value: _method_entries(value))

    @field_validator("ledger", "cache")
    @classmethod
    def _absolute(cls, value):
        return None if value is None else str(Path(value).expanduser().resolve())

    @field_validator("requests")
    @classmethod
    def _distinct_ids(cls, value):
        ids = [r.id for r in value]
        repeated = sorted({i for i in ids if ids.count(i) > 1})
        if repeated:
            raise ValueError(f"each request id once ({', '.join(repeated)} repeated)")
        return value

    @model_validator(mode="after")
    def _distinct_methods(self):
        labels = [m.label for m in self.methods]
        repeated = sorted({x for x in labels if labels.count(x) > 1})
        if repeated:
            raise ValueError(f"methods: each method (with or without gu) once ({', '.join(repeated)} repeated)")
        return self


JOB_KINDS: dict[str, type[Strict]] = {"train": TrainJob, "continual": ContinualJob,
                                      "privacy_sweep": PrivacySweepJob, "unlearn": UnlearnJob}
JobSpec = Union[TrainJob, ContinualJob, PrivacySweepJob, UnlearnJob]


# ----------------------------------------------------------------------------- cross-section rules


def _section(model_cls: type[BaseModel], document: dict, key: str):
    """The section validated on its own (its defaults when absent), or None if it has errors."""
    try:
        return model_cls.model_validate(document.get(key) or {})
    except ValidationError:
        return None


def cross_problems(kind: str, document: dict) -> list[str]:
    """Problems that involve more than one section, as 'field.path: message' lines.

    Each rule runs when the sections it reads are valid on their own, whatever else is wrong.
    """
    training = _section(TrainingSpec, document, "training")
    scaling = _section(ScalingSpec, document, "scaling")
    model = _section(ModelSpec, document, "model")
    problems = []
    private = document.get("privacy") is not None
    if private:  # the rules that do not read privacy's own fields run even when they are wrong
        problems += _privacy_problems(kind, document, _section(PrivacySpec, document, "privacy"), training, scaling,
                                      model)
    if training and scaling and not private:  # a private batch is a Poisson draw: its size varies anyway
        per_step = scaling.num_workers * training.grad_accum
        if training.batch_size % per_step:
            problems.append(f"training.batch_size: {training.batch_size} must be a multiple of "
                            f"scaling.num_workers × training.grad_accum ({per_step})")
    if model and training and model.lora is not None and training.backend == "deepspeed":
        problems.append("training.backend: LoRA (model.lora) runs on the ddp backend only")
    if kind == "continual":
        problems += _method_problems(document, training, scaling, model)
    if kind == "privacy_sweep":
        problems += _sweep_problems(document)
    if kind == "unlearn":
        problems += _method_problems(document, training, scaling, model, family="unlearning")
        problems += _unlearn_problems(document, training, scaling, model)
    return problems


def _unlearn_problems(document: dict, training, scaling, model) -> list[str]:
    """Rules that tie an unlearn job's methods, target and model together."""
    problems = []
    target = document.get("target") if isinstance(document.get("target"), dict) else {}
    target_training = _section(TrainingSpec, target, "training")
    if model and model.lora is not None:
        problems.append("model.lora: unlearning serves requests on the whole target model; remove model.lora "
                        "(gs_lora adds its own adapter per request)")
    # The target's own rules, as a train job's, under `target.`.
    inner = {"training": target.get("training") or {}, "privacy": target.get("privacy"),
             "model": document.get("model") or {}, "scaling": document.get("scaling") or {}}
    problems += [f"target.{line}" if line.split(".")[0] in ("training", "privacy") else line
                 for line in cross_problems("train", inner) if not line.startswith("model.lora")]
    entries = document.get("methods") if isinstance(document.get("methods"), list) else []
    known = methods_of("unlearning")
    for i, raw in enumerate(entries):
        entry = _method_entry(raw)
        info = known.get(entry.get("name")) if isinstance(entry, dict) else None
        if info is None:
            continue
        if info.name == "dp2u" and not isinstance(target.get("privacy"), dict):
            problems.append(f"methods[{i}]: dp2u serves requests from an ε-DP target; give target.privacy "
                            "(e.g. epsilon: 8)")
        if info.name in ("retrain", "dp2u") and target_training and not info.supports(
                target_training.backend, target_training.deepspeed.zero_stage):
            problems.append(f"methods[{i}]: {info.name} trains with target.training, whose backend it cannot run "
                            f"on: {info.backend_reason}")
        if info.name == "rmu" and model and isinstance(entry.get("params") or {}, dict):
            problems += _rmu_layer_problems(i, info.resolve({k: v for k, v in (entry.get("params") or {}).items()
                                                             if k in {p.name for p in info.params}}), model)
        if entry.get("gu") is True:
            if not info.projectable:
                allowed = ", ".join(n for n, m in known.items() if m.projectable)
                problems.append(f"methods[{i}].gu: {info.name} has no forget objective to project; gu works with: "
                                f"{allowed}")
            elif training and training.backend != "ddp":
                problems.append(f"methods[{i}].gu: GU projects whole per-sample gradients, which DeepSpeed ZeRO "
                                "partitions; use training.backend ddp")
    return problems


def _sweep_problems(document: dict) -> list[str]:
    """The train job's cross-section rules at one private and one open point, under `job.`."""
    job = document.get("job")
    if not isinstance(job, dict) or isinstance(job.get("privacy"), dict):
        return []
    epsilons = document.get("epsilons") if isinstance(document.get("epsilons"), list) else []
    settings = document.get("privacy") if isinstance(document.get("privacy"), dict) else {}
    found = []
    if any(e is not None for e in epsilons):  # a private point clips per example (see `points`)
        training = {**job["training"], "max_grad_norm": None} if isinstance(job.get("training"), dict) else None
        found += cross_problems("train", {**job, "privacy": {**settings, "epsilon": 1.0},
                                          **({"training": training} if training is not None else {})})
    if None in epsilons:
        found += cross_problems("train", {**job, "privacy": None})
    # The privacy rules speak of the sweep's own privacy section; the rest of the job's sections.
    return list(dict.fromkeys(line if line.startswith("privacy.") else f"job.{line}" for line in found))


def _privacy_problems(kind: str, document: dict, privacy, training, scaling, model) -> list[str]:
    problems = []
    if training and training.backend == "deepspeed":
        problems.append("training.backend: privacy needs per-example gradients, which DeepSpeed ZeRO flattens away; "
                        "use backend ddp (DPDDP), or privacy.grad_sample_mode ghost_fsdp to shard the weights")
    raw_training = document.get("training") if isinstance(document.get("training"), dict) else {}
    if raw_training.get("max_grad_norm") is not None:
        problems.append("training.max_grad_norm: with privacy every example's gradient is clipped to "
                        "privacy.max_grad_norm instead; remove training.max_grad_norm (or set it to null)")
    if privacy and privacy.grad_sample_mode == "ghost_fsdp":
        if scaling and scaling.num_workers < 2:
            problems.append("privacy.grad_sample_mode: ghost_fsdp shards the weights over workers; it needs "
                            "scaling.num_workers ≥ 2 (use ghost on one worker)")
        if model and model.lora is not None:
            problems.append("privacy.grad_sample_mode: ghost_fsdp with model.lora is not supported; use hooks, "
                            "functorch or ghost for DP-LoRA")
        entries = document.get("methods") if kind == "continual" and isinstance(document.get("methods"), list) else []
        if any(isinstance(_method_entry(m), dict) and _method_entry(m).get("name") == "lora" for m in entries):
            problems.append("privacy.grad_sample_mode: ghost_fsdp cannot shard the lora method's per-task adapters; "
                            "use hooks, functorch or ghost")
    if privacy and privacy.grad_sample_mode.startswith("ghost") and model and _tied_embeddings(model):
        problems.append(f"privacy.grad_sample_mode: {privacy.grad_sample_mode} does not support tied input and "
                        f"output embeddings, which {model.pretrained} has (tie_word_embeddings); use hooks or "
                        "functorch")
    if kind == "continual" and isinstance(document.get("methods"), list):
        known = methods_of("continual")
        for i, raw in enumerate(document["methods"]):
            entry = _method_entry(raw)
            info = known.get(entry.get("name")) if isinstance(entry, dict) else None
            if info is not None and not info.private:
                allowed = ", ".join(n for n, m in known.items() if m.private)
                problems.append(f"methods[{i}]: {info.name} cannot train privately: {info.private_reason}; "
                                f"with privacy use: {allowed}")
    return problems


def _rmu_layer_problems(index: int, params: dict, model) -> list[str]:
    """RMU's layers must exist in the model (known for presets and local pretrained folders)."""
    layers = _decoder_layer_count(model)
    if layers is None:
        return []
    found = []
    layer, trainable = params.get("layer"), params.get("trainable_layers")
    if isinstance(layer, int) and layer >= layers:
        found.append(f"methods[{index}].params.layer: {layer} is not a decoder layer of this model, which has "
                     f"{layers} (0..{layers - 1}); the default 7 is the authors' for 32-layer models")
    if isinstance(trainable, list) and any(isinstance(t, int) and t >= layers for t in trainable):
        found.append(f"methods[{index}].params.trainable_layers: the model has decoder layers 0..{layers - 1}")
    return found


def _decoder_layer_count(model) -> int | None:
    import json
    from pathlib import Path

    from palimpsest.presets import MODEL_PRESETS

    if model.preset:
        return MODEL_PRESETS[model.preset]["num_hidden_layers"]
    config = Path(model.pretrained or "") / "config.json"
    try:
        found = json.loads(config.read_text()).get("num_hidden_layers") if config.is_file() else None
    except (OSError, ValueError):
        return None
    return found if isinstance(found, int) else None


def _tied_embeddings(model) -> bool:
    """Whether a local pretrained model ties its input and output embeddings (transformers' default: yes)."""
    import json
    from pathlib import Path

    config = Path(model.pretrained or "") / "config.json"
    if not model.pretrained or not config.is_file():
        return False  # a preset (untied) or a hub name: not knowable offline
    try:
        return bool(json.loads(config.read_text()).get("tie_word_embeddings", True))
    except (OSError, ValueError):
        return False


def _method_problems(document: dict, training, scaling, model, family: str = "continual") -> list[str]:
    entries = document.get("methods")
    if not isinstance(entries, list):
        return []
    known = methods_of(family)
    problems, names = [], []
    stream = document.get("stream") if isinstance(document.get("stream"), dict) else {}
    for i, raw in enumerate(entries):
        entry = _method_entry(raw)
        if not isinstance(entry, dict) or entry.get("name") not in known:
            continue  # the field validation reports it
        info = known[entry["name"]]
        names.append(info.name)
        params = entry.get("params") or {}
        if not isinstance(params, dict):
            continue
        for name, message in info.check_params(params):
            problems.append(f"methods[{i}].params.{name}: {message}")
        resolved = info.resolve({k: v for k, v in params.items() if k in {p.name for p in info.params}})
        if training and not info.supports(training.backend, training.deepspeed.zero_stage):
            where = "ddp" if training.backend == "ddp" else f"deepspeed zero_stage {training.deepspeed.zero_stage}"
            allowed = ", ".join(info.backends).replace("zero", "zero_stage ")
            problems.append(f"methods[{i}]: {info.name} cannot run on {where}: {info.backend_reason}; "
                            f"it runs on: {allowed}")
        if info.needs_general and not _has_general_replay(stream):
            problems.append(f"methods[{i}]: {info.name} replays general samples; give stream.general_path "
                            "(datasets) or stream.general_replay_samples > 0 (factworld)")
        if info.name == "replay":
            ignored = {"er": "replay_ratio", "ratio": "memory_batch_size"}.get(resolved.get("form"))
            if ignored in params:
                problems.append(f"methods[{i}].params.{ignored}: not used by form {resolved['form']} "
                                "(replay_ratio: ratio form; memory_batch_size: er form)")
        ratio_of = {"replay": "replay_ratio", "gere": "replay_ratio"}.get(info.name)
        if ratio_of and training and (info.name == "gere" or resolved.get("form") == "ratio"):
            share = resolved.get(ratio_of)
            if isinstance(share, float) and 0 < share < 1:
                count = int(round(share * training.batch_size))
                if not 1 <= count < training.batch_size:
                    problems.append(f"methods[{i}].params.{ratio_of}: {share} of a batch of {training.batch_size} "
                                    f"is {count} examples; it must give at least 1 and fewer than the batch")
        if info.name == "replay" and training and scaling and resolved.get("form") == "er":
            extra = resolved.get("memory_batch_size")
            per_step = scaling.num_workers * training.grad_accum
            if isinstance(extra, int) and not isinstance(extra, bool) and extra % per_step:
                problems.append(f"methods[{i}].params.memory_batch_size: {extra} must be a multiple of "
                                f"scaling.num_workers × training.grad_accum ({per_step})")
        if info.name == "lora" and model and model.lora is not None:
            problems.append(f"methods[{i}]: the lora method adds its own adapters per task; remove model.lora")
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates and family == "continual":  # unlearning: the same method with and without gu is allowed
        problems.append(f"methods: each method may appear once ({', '.join(duplicates)} repeated)")
    return problems


def _has_general_replay(stream: dict) -> bool:
    if stream.get("source") == "datasets":
        return bool(stream.get("general_path"))
    return stream.get("general_replay_samples", 64) not in (0, None)
