"""Rules that tie a job's sections together, checked on every section that is valid on its own.

Field-level rules live on the models (`spec/<kind>.py`, `spec/common.py`); these read more
than one section (batch divisibility, a method's parameters and the backends it runs on,
what a method needs from the stream, privacy against the backend), so `validate` reports
them all at once, next to any field error, one 'field.path: message' line each.
"""

from __future__ import annotations

from pydantic import BaseModel, ValidationError

from palimpsest.catalog import methods_of
from palimpsest.spec.common import ModelSpec, PrivacySpec, ScalingSpec, TrainingSpec
from palimpsest.spec.base import method_entry


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
    problems += _speed_problems(training, scaling, model, private)
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
        entry = method_entry(raw)
        info = known.get(entry.get("name")) if isinstance(entry, dict) else None
        if info is None:
            continue
        if info.name == "dp2u" and not isinstance(target.get("privacy"), dict):
            problems.append(f"methods[{i}]: dp2u serves requests from an ε-DP base; give target.privacy "
                            "(e.g. epsilon: 8)")
        if info.name in ("retrain", "dp2u") and target_training and not info.supports(
                target_training.backend, target_training.deepspeed.zero_stage):
            problems.append(f"methods[{i}]: {info.name} trains with target.training, whose backend it cannot run "
                            f"on: {info.backend_reason}")
        if info.name == "rmu" and model and isinstance(entry.get("params") or {}, dict):
            problems += _rmu_layer_problems(i, info.resolve({k: v for k, v in (entry.get("params") or {}).items()
                                                             if k in {p.name for p in info.params}}), model)
        if entry.get("gu") is True:
            allowed = ", ".join(n for n, m in known.items() if m.projectable and not m.gu_refusal)
            if not info.projectable:
                problems.append(f"methods[{i}].gu: {info.name} has no forget objective to project; gu works with: "
                                f"{allowed}")
            elif info.gu_refusal:
                problems.append(f"methods[{i}].gu: {info.gu_refusal} (gu works with: {allowed})")
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


# Why DP-SGD (Opacus) refuses each speed option: its per-example gradients come from hooks on
# each layer's forward activations and backward gradients.
PRIVATE_SPEED_REFUSALS = {
    "precision": "Opacus computes and clips per-example gradients in fp32 (auto is fp32 with privacy); give fp32 "
                 "or auto",
    "activation_checkpointing": "Opacus's per-example hooks would capture each recomputed layer a second time",
    "compile": "Opacus's per-example gradient hooks do not run inside torch.compile's graphs",
    "packing": "per-example gradients need one example per row (a packed row holds several)",
}


def _speed_problems(training, scaling, model, private: bool) -> list[str]:
    """The speed options (precision, activation checkpointing, compile, attention kernel) against the rest."""
    problems = []
    if training and private:
        if training.precision in ("bf16", "fp16"):
            problems.append(f"training.precision: {training.precision} with privacy: "
                            f"{PRIVATE_SPEED_REFUSALS['precision']}")
        for name in ("activation_checkpointing", "compile", "packing"):
            if getattr(training, name):
                problems.append(f"training.{name}: not with privacy: {PRIVATE_SPEED_REFUSALS[name]}")
    if training and training.precision == "fp16" and training.backend == "deepspeed" and scaling and \
            not scaling.use_gpu:
        problems.append("training.precision: DeepSpeed's fp16 mode runs on GPUs only; use bf16 (or fp32) on CPU, "
                        "or set scaling.use_gpu")
    if training and training.compile and training.backend == "deepspeed":
        problems.append("training.compile: DeepSpeed wraps the model in its own engine; compile runs on the ddp "
                        "backend")
    if model and model.attn_implementation == "flash_attention_2":
        import importlib.util

        if importlib.util.find_spec("flash_attn") is None:
            problems.append("model.attn_implementation: flash_attention_2 needs the flash-attn package, which is not "
                            "installed here; use sdpa (torch's own flash kernel on GPU)")
        if scaling and not scaling.use_gpu:
            problems.append("model.attn_implementation: flash_attention_2 runs on GPUs only; set scaling.use_gpu or "
                            "use sdpa")
        if training and training.precision == "fp32":
            problems.append("model.attn_implementation: flash_attention_2 needs bf16 or fp16; set training.precision "
                            "to auto, bf16 or fp16, or use sdpa")
    return problems


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
        if any(isinstance(method_entry(m), dict) and method_entry(m).get("name") == "lora" for m in entries):
            problems.append("privacy.grad_sample_mode: ghost_fsdp cannot shard the lora method's per-task adapters; "
                            "use hooks, functorch or ghost")
    if privacy and privacy.grad_sample_mode.startswith("ghost") and model and _tied_embeddings(model):
        problems.append(f"privacy.grad_sample_mode: {privacy.grad_sample_mode} does not support tied input and "
                        f"output embeddings, which {model.pretrained} has (tie_word_embeddings); use hooks or "
                        "functorch")
    if kind == "continual" and isinstance(document.get("methods"), list):
        known = methods_of("continual")
        for i, raw in enumerate(document["methods"]):
            entry = method_entry(raw)
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
        entry = method_entry(raw)
        if not isinstance(entry, dict) or entry.get("name") not in known:
            continue  # the field validation reports it
        info = known[entry["name"]]
        names.append(info.name)
        if training and training.packing and info.packing_reason:
            problems.append(f"methods[{i}]: {info.name} cannot train on packed rows: {info.packing_reason}; set "
                            "training.packing false")
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
