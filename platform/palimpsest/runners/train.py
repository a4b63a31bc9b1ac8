"""`kind: train` — fine-tune a model on one dataset under the shared loop and evaluate it.

prepare(spec)  -> data, tokenizer and worker config (bad data raises DataError before
                  any run folder exists)
run(...)       -> one `fit()` on Ray Train (or the same loop without Ray) -> run folder
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from palimpsest.data import DataError, QAExample, generate_world
from palimpsest.data.factworld import is_rule
from palimpsest.models import build_model
from palimpsest.privacy import released_privacy
from palimpsest.runners.common import (
    build_tokenizer, export_checkpoint, fit, load_dataset_spec, loop_config, subsample, training_cost,
)
from palimpsest.run_folder import RunFolder
from palimpsest.spec import TrainJob
from palimpsest.train.batching import tokenize_qa
from palimpsest.train.config import LoopConfig
from palimpsest.train.sampling import rng_for


RULES_SET = "holdout_rules"  # the eval set of rule facts about held-out people (fact world with rules)


@dataclass
class PreparedTrain:
    tokenizer: object
    worker_config: LoopConfig
    # Membership inference: training examples (members) and examples never trained on.
    members: list[QAExample] = field(default_factory=list)
    non_members: list[QAExample] = field(default_factory=list)
    non_member_set: str | None = None
    caveat: str | None = None  # why the MIA figures may measure something else than memorisation


def load_examples(data, seed: int) -> tuple[list[QAExample], dict[str, list[QAExample]]]:
    """Training examples and extra evaluation splits for a data spec."""
    extra: dict[str, list[QAExample]] = {}
    if data.source == "factworld":
        world = fact_world(data, seed)
        if data.split == "all":
            return list(world.facts), extra
        splits = world.tofu_splits()
        if data.split != "holdout":
            extra["holdout"] = splits["holdout"]
        return splits[data.split], extra
    train = load_dataset_spec(data)
    if data.source == "file" and data.eval_path:
        extra["eval"] = load_dataset_spec(data.model_copy(update={"path": data.eval_path}))
    if data.source == "hf" and data.eval_split:
        extra["eval"] = load_dataset_spec(data.model_copy(update={"split": data.eval_split}))
    return train, extra


def prepare(spec: TrainJob, *, saved_tokenizer=None) -> PreparedTrain:
    """Load data, build the tokenizer and the worker config.

    Raises:
        DataError: the data cannot be loaded or is empty.
    """
    train, extra = load_examples(spec.data, spec.seed)
    if not train:
        raise DataError("data: the training set is empty")
    # Training data only: a tokenizer fitted to the eval sets would change the trained model.
    # The fact world is the exception: its vocabulary is the generator's, public and fixed, and
    # a BPE that had seen only the members' names would tell members apart by their token
    # counts alone (membership inference would measure the tokenizer, not memorisation).
    trained = {(e.question, e.answer) for e in train}
    world_texts = [e for e in fact_world(spec.data, spec.seed).facts if (e.question, e.answer) not in trained] \
        if spec.data.source == "factworld" else []
    tokenizer = build_tokenizer(spec.model, train + world_texts, saved=saved_tokenizer)
    # With rule facts, "train" and "holdout" score the per-person facts (memorisation) and RULES_SET the
    # rule facts of people never trained on (what a model learnt of the population: rule_accuracy).
    own = [e for e in train if not is_rule(e)]
    eval_examples = {"train": subsample(own, spec.eval.max_examples)}
    if spec.eval.holdout or spec.data.source != "factworld":
        for name, examples in extra.items():
            if name == "holdout" and any(is_rule(e) for e in examples):
                eval_examples[RULES_SET] = subsample([e for e in examples if is_rule(e)], spec.eval.max_examples)
                examples = [e for e in examples if not is_rule(e)]
            if examples:
                eval_examples[name] = subsample(examples, spec.eval.max_examples)
    config = loop_config(spec, tokenizer, tasks=[train],
                         eval_sets={name: tokenize_qa(tokenizer, ex) for name, ex in eval_examples.items()})
    members, non_members, non_member_set = membership_sets(spec, train, extra)
    caveat = None
    if spec.data.source != "factworld" and not (spec.model.tokenizer or spec.model.pretrained):
        caveat = ("the tokenizer was fitted on the training data only, so non-members may take more tokens: "
                  "compare with untrained_auc, or give model.tokenizer")
    return PreparedTrain(tokenizer, config, members, non_members, non_member_set, caveat)


def membership_sets(spec: TrainJob, train: list[QAExample], extra: dict) -> tuple[list, list, str | None]:
    """Members and non-members for membership inference: equal in number, drawn the same way (seeded).

    Fact world: whole people — as many trained people as people never trained on (holdout
    and any other split left out), so both sides hold the same attributes in the same
    mix. Other data: equal-size random draws from the training set and the eval set.
    """
    rng = rng_for(spec.seed, "membership-inference")
    cap = spec.eval.max_examples
    if spec.data.source == "factworld":
        data, world = spec.data, fact_world(spec.data, spec.seed)
        trained = {e.entity for e in train}
        # individual facts only: a rule fact is as predictable for a stranger as for a member
        inside = _by_person([e for e in train if not is_rule(e)])
        outside = _by_person([e for e in world.facts if e.entity not in trained and not is_rule(e)])
        people = min(len(inside), len(outside), (cap // data.attributes_per_entity) if cap else len(outside))
        if people == 0:
            return [], [], None
        pick = lambda groups: [fact for i in sorted(rng.choice(len(groups), people, replace=False))  # noqa: E731
                               for fact in groups[i]]
        return pick(inside), pick(outside), "people never trained on"
    if not extra.get("eval"):
        return [], [], None
    count = min(len(train), len(extra["eval"]), cap or len(train))
    draw = lambda pool: [pool[i] for i in sorted(rng.choice(len(pool), count, replace=False))]  # noqa: E731
    return draw(train), draw(extra["eval"]), "eval"


def fact_world(data, seed: int):
    """The fact world of a `factworld` data section (its own seed, else the job's)."""
    return generate_world(seed=data.seed if data.seed is not None else seed, num_entities=data.num_entities,
                          attributes_per_entity=data.attributes_per_entity, rules=getattr(data, "rules", 0))


def _by_person(facts: list[QAExample]) -> list[list[QAExample]]:
    groups: dict[str, list[QAExample]] = {}
    for fact in facts:
        groups.setdefault(fact.entity, []).append(fact)
    return list(groups.values())


def fit_and_export(spec, prepared, folder: RunFolder, exports, *, use_ray: bool, progress) -> tuple[dict, float]:
    """A job's fit with its tokenizer saved first, then each checkpoint `exports(checkpoints)` names, as
    (checkpoint directory, target folder) pairs, exported with the tokenizer (train and continual jobs).

    Returns:
        The fit's output and when the job started (`time.perf_counter()`, before the fit).
    """
    prepared.tokenizer.save_pretrained(str(folder.tokenizer))
    started = time.perf_counter()
    output, checkpoints = fit(spec, prepared.worker_config, folder, use_ray=use_ray, progress=progress)
    for directory, target in exports(checkpoints):
        export_checkpoint(directory, target, prepared.tokenizer)
    return output, started


def run(spec: TrainJob, prepared: PreparedTrain, folder: RunFolder, *, use_ray: bool = True,
        progress=None) -> dict:
    """Train, then write checkpoints/final (model + tokenizer), metrics.jsonl and the summary."""
    output, started = fit_and_export(spec, prepared, folder, lambda checkpoints: [(checkpoints[-1][0],
                                                                                  folder.checkpoints / "final")],
                                     use_ray=use_ray, progress=progress)
    (result,) = output["methods"]
    folder.write_metrics(result["records"])
    mia = membership(prepared, folder)
    return {
        "status": "ok",
        "kind": "train",
        "name": spec.name,
        "seed": spec.seed,
        "steps": output["steps"],
        "final": result["task_end"][-1],
        **rule_figures(result["task_end"][-1]),
        "parameters": result["parameters"],
        "precision": result.get("precision"),
        "privacy": released_privacy([result["privacy"]]),
        "mia": mia,
        "checkpoint": "checkpoints/final",
        "cost": {"wall_s": round(time.perf_counter() - started, 3), "train_wall_s": round(result["wall_s"], 3),
                 **{k: v for k, v in training_cost(result, output["steps"]).items() if k != "wall_s"}},
    }


def rule_figures(final: dict) -> dict:
    """rule_accuracy (rule facts of people never trained on) beside answer_accuracy (the trained people's own
    facts), when the fact world has rules."""
    if RULES_SET not in final:
        return {}
    return {"rule_accuracy": final[RULES_SET]["answer_accuracy"], "answer_accuracy": final["train"]["answer_accuracy"]}


def membership(prepared: PreparedTrain, folder: RunFolder) -> dict:
    """Membership inference on the final model: training examples against never-seen ones.

    Writes plots/mia.png (member and non-member score histograms per attack).
    """
    if not prepared.non_members:
        return {"skipped": "no examples outside the training set: give data.eval_path (file) or data.eval_split (hf)"}
    from transformers import AutoModelForCausalLM

    from transformers.utils import logging as hf_logging

    from palimpsest.metrics.mia import membership_inference, plot_mia, token_log_probs

    hf_logging.disable_progress_bar()  # no "Loading weights" bar under the run's own output
    model = AutoModelForCausalLM.from_pretrained(str(folder.checkpoints / "final"))
    ids = {"pad_id": prepared.tokenizer.pad_token_id, "eos_id": prepared.tokenizer.eos_token_id}
    sides = [(tokenize_qa(prepared.tokenizer, side), [e.answer for e in side])
             for side in (prepared.members, prepared.non_members)]
    (member_items, member_texts), (other_items, other_texts) = sides
    result, scores = membership_inference(token_log_probs(model, member_items, **ids), member_texts,
                                          token_log_probs(model, other_items, **ids), other_texts,
                                          return_scores=True)
    result["non_member_set"] = prepared.non_member_set
    # The same attacks on the model before training: what the sets' difference alone gives
    # (a confound shows as an AUC away from 0.5 here).
    untrained = build_model(prepared.worker_config.model)
    reference = membership_inference(token_log_probs(untrained, member_items, **ids), member_texts,
                                     token_log_probs(untrained, other_items, **ids), other_texts)
    result["untrained_auc"] = {name: attack["auc"] for name, attack in reference["attacks"].items()}
    if prepared.caveat:
        result["caveat"] = prepared.caveat
    folder.plots.mkdir(exist_ok=True)
    plot_mia(scores, folder.plots / "mia.png", title="membership inference: training vs "
             f"{prepared.non_member_set} examples", result=result)
    return result


def search_progress(report: dict, last_unit: int) -> dict | None:
    """A search's progress objectives in one report of the loop: each periodic evaluation's scores."""
    if "task" not in report or "task_end" in report:
        return None
    scores = report.get("scores") or {}
    return {**{f"final.{name}.{metric}": value for name, values in scores.items()
               for metric, value in values.items() if metric != "count"}, "step": report["step"]}
