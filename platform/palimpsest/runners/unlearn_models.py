"""The target and retain models of an unlearn job: trained once, kept by content hash, reused.

A model's key is the sha256 of what it depends on (model, recipe, seed, tokenizer
vocabulary, privacy, the content of its training data); an entry is written to a
temporary folder and renamed, so a crash never leaves half of one.
"""

from __future__ import annotations

import time

import hashlib
import json
import os
import shutil
from pathlib import Path
from types import SimpleNamespace

from palimpsest.catalog import methods_of
from palimpsest.runners.common import export_checkpoint, fit, loop_config
from palimpsest.runners.unlearn_data import Point, PreparedUnlearn
from palimpsest.run_folder import RunFolder
from palimpsest.spec.unlearn import UnlearnJob
from palimpsest.train.batching import tokenize_qa
from palimpsest.train.config import MethodRun
from palimpsest.unlearn.ledger import content_hash

RETAIN_POOL = "retain"


def _cache_root(spec: UnlearnJob) -> Path:
    return Path(spec.cache) if spec.cache else Path.cwd() / ".palimpsest-cache"


def _digest(payload) -> str:
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:20]


def _target_key(prepared: PreparedUnlearn, privacy) -> str:
    return "target-" + _digest({**prepared.recipe, "privacy": privacy.model_dump(mode="json") if privacy else None,
                                "data": content_hash(prepared.train)})


def _retain_key(prepared: PreparedUnlearn, point: Point) -> str:
    return "retain-" + _digest({**prepared.recipe, "data": content_hash(point.remaining)})


def _store(cache: Path, key: str, checkpoint_dir: str, tokenizer, meta: dict) -> Path:
    """Export a checkpoint into the cache under `key`, atomically (a crash leaves no half entry)."""
    cache.mkdir(parents=True, exist_ok=True)
    final = cache / key
    partial = cache / f".{key}.{os.getpid()}.partial"
    shutil.rmtree(partial, ignore_errors=True)
    export_checkpoint(checkpoint_dir, partial, tokenizer)
    (partial / "palimpsest_meta.json").write_text(json.dumps(meta, indent=2) + "\n")
    if final.exists():  # another run stored the same model meanwhile: keep theirs
        shutil.rmtree(partial)
    else:
        os.rename(partial, final)
    return final


def _cached(cache: Path, key: str) -> tuple[Path, dict] | None:
    meta = cache / key / "palimpsest_meta.json"
    return (cache / key, json.loads(meta.read_text())) if meta.is_file() else None


def pretrained_config(base: dict, path: Path) -> dict:
    """The model config of a trained model in `path` (same token ids as `base`)."""
    return {**base, "preset": None, "pretrained": str(path), "lora": None}


def as_train(spec: UnlearnJob, training, privacy):
    """What `loop_config` reads of a job, for the target's and the retain models' training."""
    return SimpleNamespace(training=training, privacy=privacy, seed=spec.seed, model=spec.model, eval=spec.eval,
                           scaling=spec.scaling)


def _cost(result: dict, index: int) -> dict:
    """Task `index`'s training cost: wall time, tokens and the FLOPs of every model call (`train.flops`), and
    where and when it was measured (a cached model's time is another job's, maybe another machine's)."""
    import socket

    return {"wall_s": round(result["task_wall_s"][index], 3), "train_tokens": result["task_tokens"][index],
            "train_flops": result["task_flops"][index], "steps": result["steps"],
            "measured_on": socket.gethostname(), "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}


def started_from(prepared: PreparedUnlearn) -> str:
    """What the target and the retain models are trained from: a path (a pre-trained base, a pretrained
    model) or the preset's seeded init."""
    return prepared.base_model.get("pretrained") or f"{prepared.base_model.get('preset')} init, seed " \
        f"{prepared.base_model.get('seed')}"


def pretrained_base(spec: UnlearnJob, prepared: PreparedUnlearn, folder: RunFolder, *,
                    use_ray: bool) -> tuple[Path, dict] | None:
    """The base pre-trained on the public facts (`prepared.public`): cached, else trained now; None without them.

    TOFU's base LLM knows the real authors and the world facts before it is fine-tuned on
    the fictitious ones, and model utility asks whether unlearning kept them. The target,
    the retain models, `retrain` and the DP base all start from this model; its cost is
    paid once and reported apart (`summary.pretrained_base`), never in a method's or a
    retraining's.
    """
    if not prepared.public:
        return None
    cache = _cache_root(spec)
    key = "base-" + _digest({key: prepared.recipe[key] for key in ("model", "seed", "vocab", "pretraining")})
    found = _cached(cache, key)
    if found:
        return found
    config = loop_config(as_train(spec, spec.target.pretraining, None), prepared.tokenizer, tasks=[prepared.public],
                         eval_sets={})
    output, checkpoints = fit(spec, config.with_(model=prepared.base_model), folder, "pretrain",
                              use_ray=use_ray)
    (result,) = output["methods"]
    meta = {"kind": "pretrained_base", "cost": _cost(result, 0), "examples": len(prepared.public),
            "trained_in": folder.path.name}
    return _store(cache, key, checkpoints[-1][0], prepared.tokenizer, meta), meta


def target_model(spec: UnlearnJob, prepared: PreparedUnlearn, folder: RunFolder, *, use_ray: bool) -> tuple[Path, dict]:
    """The deployed target, trained on everything: from the cache, else trained now.

    Without `target.privacy` it is trained from the base with `target.training`. With it,
    as DP2Unlearning (Mahmud et al., 2025; the authors' code, github.com/tamimalmahmud/
    DP2Unlearning: `Train_dp_SGD.py` trains the DP base on TOFU's full set, the deployed
    "FDM" fine-tunes it on the full set without noise, 5 epochs after 10): a DP base is
    trained with (ε, δ)-DP on everything (`dp_base_model`), then fine-tuned on everything
    without noise for `target.deploy_fraction` of the steps. The deployed target has no DP
    guarantee; its meta names the DP base (`dp_base`), which dp2u unlearns from.
    """
    if spec.target.privacy is None:
        return _trained_target(spec, prepared, folder, use_ray=use_ray)
    base_dir, base_meta = dp_base_model(spec, prepared, folder, use_ray=use_ray)
    cache = _cache_root(spec)
    key = "deployed-" + _digest({"dp_base": base_dir.name, "fraction": spec.target.deploy_fraction})
    found = _cached(cache, key)
    if found:
        return found
    training = spec.target.training
    steps = max(1, round(spec.target.deploy_fraction * training.steps))
    training = training.model_copy(update={"steps": steps, "warmup_steps": min(training.warmup_steps, steps - 1)})
    config = loop_config(as_train(spec, training, None), prepared.tokenizer, tasks=[prepared.train], eval_sets={})
    output, checkpoints = fit(spec, config.with_(model=pretrained_config(prepared.base_model, base_dir)), folder,
                              "deployed", use_ray=use_ray)
    (result,) = output["methods"]
    meta = {"kind": "deployed", "cost": _cost(result, 0), "privacy": None, "examples": len(prepared.train),
            "trained_in": folder.path.name, "steps": steps,
            "dp_base": {"path": str(base_dir), **base_meta}}
    return _store(cache, key, checkpoints[-1][0], prepared.tokenizer, meta), meta


def dp_base_model(spec: UnlearnJob, prepared: PreparedUnlearn, folder: RunFolder, *,
                  use_ray: bool) -> tuple[Path, dict]:
    """The (ε, δ)-DP model trained on everything (DP2Unlearning's DP base): cached, else trained now."""
    return _trained_target(spec, prepared, folder, use_ray=use_ray)


def _trained_target(spec: UnlearnJob, prepared: PreparedUnlearn, folder: RunFolder, *,
                    use_ray: bool) -> tuple[Path, dict]:
    """The base trained on everything with `target.training` (ε-DP with `target.privacy`), cached by content."""
    cache, key = _cache_root(spec), _target_key(prepared, spec.target.privacy)
    found = _cached(cache, key)
    if found:
        return found
    config = loop_config(as_train(spec, spec.target.training, spec.target.privacy), prepared.tokenizer,
                         tasks=[prepared.train], eval_sets={})
    output, checkpoints = fit(spec, config.with_(model=prepared.base_model), folder, "target",
                              use_ray=use_ray)
    (result,) = output["methods"]
    meta = {"kind": "dp_base" if spec.target.privacy else "target", "cost": _cost(result, 0),
            "privacy": result["privacy"], "examples": len(prepared.train), "trained_in": folder.path.name,
            "started_from": started_from(prepared)}
    return _store(cache, key, checkpoints[-1][0], prepared.tokenizer, meta), meta


def retain_models(spec: UnlearnJob, prepared: PreparedUnlearn, folder: RunFolder, *,
                  use_ray: bool) -> list[tuple[Path, dict]]:
    """The retain model of every point (cached by content hash); the missing ones trained in one fit by `retrain`."""
    cache = _cache_root(spec)
    keys = [_retain_key(prepared, point) for point in prepared.points]
    missing = [i for i, key in enumerate(keys) if _cached(cache, key) is None]
    missing = [i for i in missing if keys[i] not in {keys[j] for j in missing if j < i}]  # one training per model
    if missing:
        info = methods_of("unlearning")["retrain"]
        points = [prepared.points[i] for i in missing]
        config = loop_config(as_train(spec, spec.target.training, None), prepared.tokenizer,
                             tasks=[p.request.items for p in points], eval_sets={},
                             methods=[MethodRun(info.name, info.module, info.implementation,
                                                       params={"seed_offset": 0})])  # the retain model itself
        tokenize = lambda examples: tokenize_qa(prepared.tokenizer, examples)  # noqa: E731
        config = config.with_(model=prepared.base_model, models={"base": prepared.base_model},
                              pools={RETAIN_POOL: [tokenize(p.remaining) for p in points]})
        output, checkpoints = fit(spec, config, folder, "retain", use_ray=use_ray)
        (result,) = output["methods"]
        ends = {metrics["task_end"]: directory for directory, metrics in checkpoints if "task_end" in metrics}
        for task, i in enumerate(missing):
            meta = {"kind": "retain", "cost": _cost(result, task), "examples": len(prepared.points[i].remaining),
                    "trained_in": folder.path.name, "started_from": started_from(prepared)}
            _store(cache, keys[i], ends[task], prepared.tokenizer, meta)
    return [_cached(cache, key) for key in keys]


