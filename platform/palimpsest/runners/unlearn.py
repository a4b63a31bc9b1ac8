"""`kind: unlearn` — train a target, serve forget requests one after another with each method, compare to retraining.

prepare(spec)  -> splits, requests, tokenizer, the points of the sequence (bad data,
                  an unknown split or a request whose items were never trained on raise
                  DataError before any run folder exists)
run(...)       -> 1. the target model (forget ∪ retain, optionally ε-DP), cached by content hash;
                  2. the retain model of every point (trained on what remains after requests
                     1..k, never private), cached by content hash: the gold standard;
                  3. one `fit()` in which every method serves the requests in order, from the
                     target, each request evaluated on rank 0 the moment it is served (TOFU
                     metrics against that point's retain model, MIA, cost) and recorded in the
                     ledger (pending → done) before its checkpoint;
                  4. summary.json, metrics.jsonl, plots.

Points: after request k, "forget" is everything requested so far and "retain" what
remains of the training data; each point has its own retain model. Retain-side scores are
measured on trained facts on purpose (what the request should leave intact); the holdout
is never trained on. See README, "Unlearning".
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass, replace
from pathlib import Path

from palimpsest import progress as ui
from palimpsest.data import DataError, QAExample
from palimpsest.metrics.curves import gu_gaps
from palimpsest.models import model_config
from palimpsest.runners.common import build_tokenizer, fit, loop_config, method_runs
from palimpsest.runners.unlearn_data import Point, PreparedUnlearn, Request, load_points
from palimpsest.runners.unlearn_models import (
    RETAIN_POOL, as_train, pretrained_base, pretrained_config, retain_models, target_model,
)
from palimpsest.run_folder import INTERRUPTED, RunFolder
from palimpsest.spec.unlearn import UnlearnJob
from palimpsest.train.batching import TokenizedQA, tokenize_qa
from palimpsest.train.config import MethodRun, TaskEnd
from palimpsest.unlearn.evaluation import OPTION_SPLITS
from palimpsest.unlearn.idk import IDK as IDK_POOL
from palimpsest.unlearn.ledger import Ledger, LedgerError, config_hash, content_hash


def prepare(spec: UnlearnJob, *, saved_tokenizer=None) -> PreparedUnlearn:
    """Splits, requests, points and the tokenizer.

    Raises:
        DataError: unreadable data, an unknown split, a request of untrained items, nothing left to retain.
    """
    if spec.seeds > 1:  # the first seed's run; the others are prepared as they come (see `run_seeds`)
        return prepare(seed_spec(spec, 0), saved_tokenizer=saved_tokenizer)
    _method_runs(spec, unlearning=None, original=None)  # parameter errors first, as validate reports them
    train, points, tokenizer_texts, public = load_points(spec)
    refusals = idk_refusals(spec)
    if refusals and not (spec.model.tokenizer or spec.model.pretrained):  # a fitted tokenizer must know their words
        tokenizer_texts = [*tokenizer_texts, *(QAExample("?", answer) for answer in refusals)]
    tokenizer = build_tokenizer(spec.model, tokenizer_texts, saved=saved_tokenizer)
    base = model_config(spec.model.model_dump(), vocab_size=len(tokenizer), pad_id=tokenizer.pad_token_id,
                        bos_id=tokenizer.bos_token_id, eos_id=tokenizer.eos_token_id, seed=spec.seed)
    vocab = hashlib.sha256(json.dumps(sorted(tokenizer.get_vocab().items())).encode()).hexdigest()
    recipe = {"model": base, "training": spec.target.training.model_dump(mode="json"), "seed": spec.seed,
              "vocab": vocab}
    if public:  # the base the target and the retain models start from is pre-trained on the public facts
        recipe["pretraining"] = {"training": spec.target.pretraining.model_dump(mode="json"),
                                 "data": content_hash(public)}
    configs = request_configs(spec, recipe, train, points)
    if spec.ledger:  # a ledger kept across runs must agree with the job before anything runs
        _resume_points(Ledger(spec.ledger), _method_runs(spec, unlearning=None, original=None), points, configs,
                       spec.ledger_mode)
    if spec.target.privacy is not None:  # calibrate σ now: an impossible budget is refused before any folder
        loop_config(as_train(spec, spec.target.training, spec.target.privacy), tokenizer, tasks=[train],
                    eval_sets={})
    notes = []
    if spec.data.source != "factworld" and not (spec.model.tokenizer or spec.model.pretrained):
        notes.append("the tokenizer was fitted on the training data only: holdout items may take more tokens, "
                     "which the MIA can pick up; give model.tokenizer")
    prepared = PreparedUnlearn(tokenizer, train, points, base, recipe, notes, configs, public=public)
    prepared.idk = [item.answer for item in tokenize_qa(tokenizer, [QAExample("?", a) for a in refusals])]
    return prepared


def idk_refusals(spec: UnlearnJob) -> list[str]:
    """The "I don't know" answers the job's idk methods teach (none without one).

    Raises:
        DataError: the methods name different answer files, or a file holds none.
    """
    from palimpsest.unlearn.idk import idk_answers

    paths = {(m.params or {}).get("idk_path") for m in spec.methods if m.name in ("idk_nll", "idk_dpo")}
    if not paths:
        return []
    if len(paths) > 1:
        raise DataError("methods: the idk methods name different idk_path files; give them one")
    (path,) = paths
    try:
        return idk_answers(path)
    except (OSError, ValueError) as error:
        raise DataError(f"methods: idk_path: {error}") from None


def request_configs(spec: UnlearnJob, recipe: dict, train, points: list[Point]) -> dict[str, list[dict]]:
    """Per method label, per point: everything a served request's result depends on (the ledger's config).

    The method and its resolved parameters, the unlearning recipe, the target's recipe (model,
    training, seed, vocabulary), its data and privacy, the evaluation and its items, and the
    requests served before this one: a ledger entry under another of these is another result.
    """
    privacy = spec.target.privacy.model_dump(mode="json") if spec.target.privacy else None
    common = {"unlearning": spec.training.model_dump(mode="json"),
              "target": {**recipe, "privacy": privacy, "data": content_hash(train)},
              "epsilon": privacy["epsilon"] if privacy else None,
              "eval": spec.eval.model_dump(mode="json")}
    per_point = [{"earlier": [[p.request.id, p.request.items_hash] for p in points[:index]],
                  "eval_items": {name: content_hash(items) for name, items in point.sets.items()}}
                 for index, point in enumerate(points)]
    configs = {}
    for method, run in zip(spec.methods, _method_runs(spec, unlearning=None, original=None)):
        identity = {"name": method.name, "params": run.params, "gu": method.gu,
                    "gu_samples": method.gu_samples if method.gu else None, **(method.variant or {})}
        configs[method.label] = [{"method": identity, **common, **point} for point in per_point]
    return configs


# ----------------------------------------------------------------------------- methods


def _method_runs(spec: UnlearnJob, *, unlearning, original) -> list[MethodRun]:
    """The methods with their parameters checked, each with its own schedule (retrain: the target's recipe).

    Raises:
        DataError: a parameter is unknown or out of range (`validate` reports the same).
    """
    runs = []
    for method, run in zip(spec.methods, method_runs("unlearning", spec.methods)):
        if unlearning is not None:
            schedule = run.build().schedule(unlearning, original)
            if method.variant:  # this entry's own lr / steps (a sweep lists the method once per value)
                steps = method.steps or schedule.steps
                schedule = replace(schedule, lr=method.lr or schedule.lr, steps=steps,
                                   warmup_steps=min(schedule.warmup_steps, steps - 1))
            run = replace(run, optimisation=schedule)
        if method.gu:
            from palimpsest.unlearn.gu import wrap

            run = wrap(run, method.gu_samples)
        runs.append(replace(run, name=method.label))
    return runs


# ----------------------------------------------------------------------------- serving


@dataclass
class RequestEvaluator:
    """The loop's task-end hook for an unlearn run: score the request just served, export it, record it done.

    Runs on rank 0 in the worker, before the request's checkpoint, so the ledger never
    misses a request a checkpoint calls finished.
    """

    tokenizer_dir: str
    points: list[Point]
    references: list[dict]  # per point: the retain model's `model_scores`
    retain_costs: list[dict]  # per point: the retain model's training cost
    ledger_path: str
    configs: dict[str, list[dict]]  # per method label, per point: the ledger's config
    export_root: str
    epsilon: float | None
    batch_size: int
    max_new_tokens: int
    order: list[tuple[str, int]]  # (method label, first task) in the order the loop runs them
    progress_key: str | None = None  # the display's row of served requests (`palimpsest.progress`)

    def __call__(self, end: TaskEnd) -> list[dict]:
        from transformers import AutoTokenizer

        from palimpsest.models import export_pretrained
        from palimpsest.unlearn.evaluation import model_scores, request_metrics

        point = self.points[end.task]
        tokenizer = AutoTokenizer.from_pretrained(self.tokenizer_dir)
        device = next(end.model.parameters()).device
        scores = model_scores(end.model, tokenizer, point.sets, batch_size=self.batch_size, device=device,
                              max_new_tokens=self.max_new_tokens)
        metrics = request_metrics(scores, self.references[end.task])
        retain = self.retain_costs[end.task]
        flops = end.train_flops  # every forward and backward the method ran (reference, frozen, per-sample)
        # Wall-time ratios are taken in the summary, against a retraining timed in this job (see `wall_ratios`).
        metrics["cost"] = {"unlearn_wall_s": round(end.wall_s, 3), "train_tokens": end.train_tokens,
                           "train_flops": flops, "steps": end.steps, "retrain_flops": retain["train_flops"],
                           "flops_ratio": round(flops / retain["train_flops"], 4) if retain["train_flops"] else None}
        target = Path(self.export_root) / end.method / point.request.id
        export_pretrained(end.model, target)
        tokenizer.save_pretrained(str(target))
        ledger = Ledger(self.ledger_path)
        ledger.finish(point.request.id, end.method, config_hash(self.configs[end.method][end.task]), metrics=metrics,
                      checkpoint=str(target))
        self._begin_next(ledger, end)
        if self.progress_key:
            ui.update(self.progress_key, advance=1, note=f"{point.request.id} by {end.method}")
        flat = {k: v for k, v in metrics.items() if isinstance(v, (int, float)) and v is not None}
        flat.update({f"mia_{name}": v for name, v in metrics["mia"].items()})
        flat.update({f"cost_{name}": v for name, v in metrics["cost"].items() if v is not None})
        return [{"step": (end.task + 1) * end.steps, "task": end.task, "request": point.request.id, "split": "request",
                 "metric": name, "value": value} for name, value in flat.items()]

    def _begin_next(self, ledger: Ledger, end: TaskEnd) -> None:
        """The next request this run serves goes pending: this method's next, else the next method's first."""
        if end.task + 1 < len(self.points):
            begin(ledger, self.points[end.task + 1].request, end.method, self.configs[end.method][end.task + 1],
                  self.epsilon)
            return
        labels = [label for label, _ in self.order]
        following = labels.index(end.method) + 1 if end.method in labels else len(labels)
        if following < len(self.order):
            label, first = self.order[following]
            begin(ledger, self.points[first].request, label, self.configs[label][first], self.epsilon)


def begin(ledger: Ledger, request: Request, method: str, config: dict, epsilon: float | None) -> None:
    """Mark `request` pending for `method` under `config`, unless it already is (a resumed run serves it on)."""
    record = ledger.latest(method, request.id, config_hash(config))
    if record is None or record["status"] != "pending":
        ledger.begin(request.id, request.items_hash, method=method, config=config, epsilon=epsilon,
                     items=len(request.items))


def mark_failed(ledger: Ledger, configs: dict[str, list[dict]], points: list[Point], error: BaseException) -> None:
    """The request this run was serving when `error` stopped it is `failed`, with the error.

    Only requests of this job's configurations are touched; a Ctrl-C leaves them pending
    (the next run serves them on).
    """
    ours = {config_hash(config) for per_point in configs.values() for config in per_point}
    for record in ledger.pending():
        if record.get("config_hash") in ours and any(p.request.id == record["id"] for p in points):
            ledger.fail(record["id"], record["method"], record["config_hash"], f"{type(error).__name__}: {error}")


def _resume_points(ledger: Ledger, runs: list[MethodRun], points: list[Point], configs: dict[str, list[dict]],
                   mode: str) -> list[tuple[MethodRun, int, str | None]]:
    """(method, first request to serve, the model to serve it from) per method, as the ledger says.

    Requests a method has done under this job's configuration are skipped; it starts from
    the checkpoint of its last done one.

    Raises:
        DataError: a request was recorded with other items or (mode refuse) under another configuration,
            a request is done after one that is not (the ledger and the job disagree on the order),
            or the checkpoint of the last done request is gone.
    """
    updated = []
    for run in runs:
        try:
            done = [ledger.decide(p.request.id, p.request.items_hash, run.name, configs[run.name][i],
                                  mode=mode).action == "skip" for i, p in enumerate(points)]
        except LedgerError as error:
            raise DataError(f"ledger: {error}") from None
        first = done.index(False) if False in done else len(points)
        if any(done[first:]):
            late = points[done.index(True, first)].request.id
            raise DataError(f"ledger: {run.name} has request {late!r} done but the earlier "
                            f"{points[first].request.id!r} not; serve requests in the order the ledger has them")
        model = None
        if first:
            checkpoint = ledger.latest(run.name, points[first - 1].request.id,
                                       config_hash(configs[run.name][first - 1])).get("checkpoint")
            if not checkpoint or not (Path(checkpoint) / "config.json").is_file():
                raise DataError(f"ledger: the model after request {points[first - 1].request.id!r} of {run.name} "
                                f"({checkpoint}) is gone; serve the requests again under new ids")
            model = checkpoint
        updated.append((run, first, model))
    return updated


def run(spec: UnlearnJob, prepared: PreparedUnlearn, folder: RunFolder, *, use_ray: bool = True,
        progress=None, fail_at=None) -> dict:
    """Serve the job's requests; `fail_at` (a `train.config.FailAt`) is the tests' injected failure."""
    if spec.seeds > 1:
        return run_seeds(spec, prepared, folder, use_ray=use_ray, progress=progress, fail_at=fail_at)
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # no "Loading weights" bar per model the driver scores
    started = time.perf_counter()
    prepared.tokenizer.save_pretrained(str(folder.tokenizer))
    ledger_path = Path(spec.ledger) if spec.ledger else folder.path / "ledger.jsonl"
    ledger = Ledger(ledger_path)
    unlearning = loop_config(as_train(spec, spec.training, None), prepared.tokenizer, tasks=[[]], eval_sets={})
    original = loop_config(as_train(spec, spec.target.training, None), prepared.tokenizer, tasks=[[]],
                           eval_sets={})
    runs = _method_runs(spec, unlearning=unlearning.optimisation, original=original.optimisation)
    plan = _resume_points(ledger, runs, prepared.points, prepared.configs, spec.ledger_mode)
    for run, first, _ in plan:
        for index, point in enumerate(prepared.points[:first]):
            served = ledger.latest(run.name, point.request.id, config_hash(prepared.configs[run.name][index]))
            ui.say(f"{point.request.id} by {run.name}: already served at {served['time']}, skipped")
    # Every method stays in the loop's list (a method done with every request starts past the last
    # task), so the method indices in this run's checkpoints mean the same methods on a resume.
    pending = [first < len(prepared.points) for _, first, _ in plan]
    pretrained = pretrained_base(spec, prepared, folder, use_ray=use_ray)
    if pretrained is not None:  # the target, the retain models and retrain start from it
        prepared.base_model = pretrained_config(prepared.base_model, pretrained[0])
    target_dir, target_meta = target_model(spec, prepared, folder, use_ray=use_ray)
    retained = retain_models(spec, prepared, folder, use_ray=use_ray)
    from palimpsest.models import build_model
    from palimpsest.unlearn.evaluation import model_scores, request_metrics

    # Each point's retain model (the gold standard every request is judged against) and the untouched target.
    references, target_points, retain_points, dp_base_points = [], [], [], []
    target = build_model(pretrained_config(prepared.base_model, target_dir))
    dp_base = target_meta.get("dp_base")
    dp_base_cfg = pretrained_config(prepared.base_model, Path(dp_base["path"])) if dp_base else None
    dp_base_model = build_model(dp_base_cfg) if dp_base else None
    for point, (path, _) in zip(prepared.points, retained):
        reference = model_scores(build_model(pretrained_config(prepared.base_model, path)), prepared.tokenizer,
                                 point.sets, batch_size=spec.eval.batch_size, max_new_tokens=spec.eval.max_new_tokens)
        references.append(reference)
        retain_points.append(request_metrics(reference, reference))
        for model, scored in ((target, target_points), (dp_base_model, dp_base_points)):
            if model is not None:
                scored.append(request_metrics(model_scores(model, prepared.tokenizer, point.sets,
                                                           batch_size=spec.eval.batch_size,
                                                           max_new_tokens=spec.eval.max_new_tokens), reference))
    if pretrained is not None:  # what the base knew of the public facts before the target was fine-tuned
        from palimpsest.unlearn.evaluation import split_scores, utility_parts

        base = build_model(prepared.base_model)
        pretrained[1]["utility_parts"] = utility_parts({
            split: split_scores(base, prepared.tokenizer, items, forget=False, batch_size=spec.eval.batch_size,
                                max_new_tokens=spec.eval.max_new_tokens, options=True)
            for split, items in prepared.points[0].sets.items() if split in OPTION_SPLITS})
    epsilon = spec.target.privacy.epsilon if spec.target.privacy else None
    if any(pending):
        target_cfg = pretrained_config(prepared.base_model, target_dir)
        methods = [replace(run, first_task=first,
                           model=pretrained_config(prepared.base_model, Path(model)) if model else None)
                   for run, first, model in plan]
        evaluator = RequestEvaluator(
            tokenizer_dir=str(folder.tokenizer), points=prepared.points, references=references,
            retain_costs=[meta["cost"] for _, meta in retained], ledger_path=str(ledger_path),
            configs=prepared.configs,
            export_root=str(folder.path / "requests"), epsilon=epsilon, batch_size=spec.eval.batch_size,
            max_new_tokens=spec.eval.max_new_tokens,
            order=[(m.name, m.first_task) for m in methods if m.first_task < len(prepared.points)],
            progress_key=f"{folder.path.name} requests")
        config = unlearning.with_(
            model=target_cfg, models={"base": prepared.base_model, "target": target_cfg,
                                      **({"dp_base": dp_base_cfg} if dp_base_cfg else {})}, methods=methods,
            tasks=[tokenize_qa(prepared.tokenizer, p.request.items) for p in prepared.points],
            pools={RETAIN_POOL: [tokenize_qa(prepared.tokenizer, p.remaining) for p in prepared.points],
                   **({IDK_POOL: [[TokenizedQA((), answer) for answer in prepared.idk]] * len(prepared.points)}
                      if prepared.idk else {})},
            task_end=evaluator, fail_at=fail_at)
        first = methods[pending.index(True)]
        begin(ledger, prepared.points[first.first_task].request, first.name,
              prepared.configs[first.name][first.first_task], epsilon)
        # One request served by each method is one row unit: the row counts (request, method) servings.
        ui.begin(evaluator.progress_key, f"requests served ({ui.counted(len(prepared.points), 'request')}"
                 f" × {ui.counted(len(plan), 'method')})", len(prepared.points) * len(plan),
                 done=sum(first for _, first, _ in plan))
        try:
            output, _ = fit(spec, config, folder, "unlearn", use_ray=use_ray, progress=progress)
        except Exception as error:  # a Ctrl-C (KeyboardInterrupt) leaves the request pending, to serve on
            if not INTERRUPTED.is_set():  # under Ray an interrupt surfaces as the aborted run's error
                mark_failed(ledger, prepared.configs, prepared.points, error)
            raise
        ui.end(evaluator.progress_key)
        folder.write_metrics([{**r, "method": result["name"]} for result in output["methods"]
                              for r in result["records"]])
    else:
        folder.write_metrics([])
    return summarise(spec, prepared, ledger, runs, target_points, target_meta, retained, retain_points, epsilon,
                     dp_base_points=dp_base_points, pretrained=pretrained,
                     started=started, firsts={run.name: first for run, first, _ in plan}, started_in=folder.path.name)


# ----------------------------------------------------------------------------- summary

SUMMARY_KEYS = ("forget_quality", "model_utility", "forget_rouge", "forget_truth_ratio", "mia", "privleak",
                "extraction_strength", "exact_memorization")


EVAL_SETS = {"forget": "every item requested so far (trained on, then forgotten)",
             "retain": "trained items that remain (retention of trained facts, on purpose)",
             "holdout": "people never trained on (the MIA's non-members; not in model utility)",
             "real_authors": "TOFU's real authors (real_authors_perturbed): in model utility, with options",
             "world_facts": "TOFU's world facts (world_facts_perturbed): in model utility, with options"}


def utility_note(sets: dict) -> str:
    """What this job's model utility is: TOFU's 9 numbers, or the retain parts alone (and why)."""
    if all(split in sets for split in OPTION_SPLITS):
        return "TOFU's: hmean of 9 numbers (retain, real authors, world facts × probability, ROUGE-L, truth ratio)"
    missing = ", ".join(f"{split}_perturbed" for split in OPTION_SPLITS if split not in sets)
    return (f"the retain parts of TOFU's (hmean of {3 * (1 + sum(s in sets for s in OPTION_SPLITS))} numbers): "
            f"the data has no {missing}, so it is not TOFU's 9-number model utility")


def forget_set_warnings(points: list[Point]) -> list[str]:
    """One line per point whose forget set is too small for its forget quality to mean anything."""
    from palimpsest.metrics.tofu import forget_quality_floor, smallest_forget_set

    needed = smallest_forget_set(0.05)
    found = []
    for point in points:
        items = len(point.sets["forget"])
        floor = forget_quality_floor(items)
        if floor >= 0.05:
            found.append(f"after request {point.request.id}: the forget set has {items} scored item(s), so forget "
                         f"quality cannot fall below {floor:.3g} (the KS test of {items} against {items} values): "
                         f"even the untouched target reads as forgotten at 0.05; it takes at least {needed} items")
    return found


def retrain_timings(methods: dict, retained: list, *, started_in: str) -> list[dict]:
    """Per point, the retraining wall time a method's is divided by: one timed in THIS job on its workers.

    The retain model when this job trained it, else the `retrain` method's serving of that
    request in this job; otherwise none (a cached retain model's time was measured by
    another job, maybe on another machine: it is shown apart, with where and when).
    """
    timings = []
    for index, (_, meta) in enumerate(retained):
        cost = meta["cost"]
        retrain = (methods.get("retrain") or {}).get("requests", [])
        served = retrain[index] if index < len(retrain) and retrain[index]["status"] == "served" else None
        if meta.get("trained_in") == started_in:
            timing = {"wall_s": cost["wall_s"], "timed": "the retain model, trained in this job"}
        elif served is not None:
            timing = {"wall_s": served["cost"]["unlearn_wall_s"], "timed": "the retrain method, in this job"}
        else:
            timing = {"wall_s": None, "timed": None}
        if meta.get("trained_in") != started_in:
            timing["cached"] = {key: cost.get(key) for key in ("wall_s", "measured_on", "measured_at")}
        timings.append(timing)
    return timings


def method_cost(name: str, requests: list[dict], timed: list[dict], target_meta: dict) -> dict:
    """A method's cost over the requests: wall time and FLOPs, each against retraining's (see `retrain_timings`).

    dp2u needs a DP target trained for it: its FLOPs are also shown with that training
    amortised over the requests served (`flops_ratio_with_base`).
    """
    costs = [r["cost"] for r in requests]
    wall = sum(c["unlearn_wall_s"] for c in costs)
    retrain_walls = [t["wall_s"] for t in timed]
    retrain_wall = sum(retrain_walls) if None not in retrain_walls else None
    flops, retrain_flops = sum(c["train_flops"] for c in costs), sum(c["retrain_flops"] for c in costs)
    cost = {"unlearn_wall_s": round(wall, 3), "retrain_wall_s": None if retrain_wall is None else round(retrain_wall, 3),
            "ratio": round(wall / retrain_wall, 4) if retrain_wall else None,
            "retrain_timed": sorted({t["timed"] for t in timed if t["timed"]}) or None,
            "train_flops": flops, "retrain_flops": retrain_flops,
            "flops_ratio": round(flops / retrain_flops, 4) if retrain_flops else None}
    cached = [t["cached"] for t in timed if "cached" in t]
    if cached:
        cost["cached_retrain"] = cached
    if name == "dp2u" and (target_meta.get("dp_base") or {}).get("cost", {}).get("train_flops") is not None:
        base = target_meta["dp_base"]["cost"]["train_flops"]
        cost["base_flops"] = base
        cost["flops_ratio_with_base"] = round((flops + base) / retrain_flops, 4) if retrain_flops else None
    return cost


def summarise(spec, prepared, ledger, runs, target_points, target_meta, retained, retain_points, epsilon, *,
              started, firsts: dict[str, int], started_in: str, dp_base_points: list | None = None,
              pretrained: tuple | None = None) -> dict:
    """The run's summary; `firsts[label]`: the first request that method served in this run (earlier: skipped)."""
    state = ledger.state()
    methods = {}
    for method, run in zip(spec.methods, runs):
        records = [state[(run.name, p.request.id, config_hash(prepared.configs[run.name][i]))]
                   for i, p in enumerate(prepared.points)]
        requests = [{"id": p.request.id, "items": len(p.request.items), **record["metrics"],
                     "checkpoint": record["checkpoint"], "served_at": record["time"],
                     "status": "skipped" if index < firsts[run.name] else "served"}
                    for index, (p, record) in enumerate(zip(prepared.points, records))]
        # Only dp2u's model descends from the ε-DP base without a non-private pass over the forget set.
        methods[run.name] = {**{key: requests[-1][key] for key in SUMMARY_KEYS},
                             "epsilon": epsilon if run.name == "dp2u" else None, "base": method.base_label,
                             "variant": method.variant, "requests": requests}
    timed = retrain_timings(methods, retained, started_in=started_in)
    for name, block in methods.items():
        block["cost"] = method_cost(name, block["requests"], timed, target_meta)
    target_last = target_points[-1]
    summary = {
        "status": "ok",
        "kind": "unlearn",
        "name": spec.name,
        "seed": spec.seed,
        "ledger": str(ledger.path),
        "requests": [{"id": p.request.id, "items": len(p.request.items), "items_hash": p.request.items_hash,
                      "forgotten": len(p.forgotten), "remaining": len(p.remaining)} for p in prepared.points],
        "eval_sets": {name: EVAL_SETS[name] for name in prepared.points[0].sets},
        "utility": utility_note(prepared.points[0].sets),
        "target": {**{key: target_last[key] for key in SUMMARY_KEYS}, "privacy": target_meta.get("privacy"),
                   "cost": target_meta["cost"],
                   "started_from": (target_meta.get("dp_base") or target_meta).get("started_from"),
                   **({"made": f"the DP base fine-tuned on all the data without noise ({target_meta['steps']} "
                              "steps): no DP guarantee"} if target_meta.get("dp_base") else {}),
                   "per_request": [{key: t[key] for key in SUMMARY_KEYS} for t in target_points]},
        "retain_models": [{"id": p.request.id, "path": str(path), "cost": meta["cost"],
                           "started_from": meta.get("started_from"),
                           **{key: scores[key] for key in ("model_utility", "forget_rouge", "forget_truth_ratio", "mia")}}
                          for p, (path, meta), scores in zip(prepared.points, retained, retain_points)],
        "skipped": [name for name, first in firsts.items() if first == len(prepared.points)],
        **({"pretrained_base": {"path": str(pretrained[0]), "examples": pretrained[1]["examples"],
                                "cost": pretrained[1]["cost"], "utility_parts": pretrained[1].get("utility_parts"),
                                "note": "the base pre-trained on the public facts (real authors, world facts) that "
                                        "the target, the retain models and retrain start from; paid once, in no "
                                        "method's or retraining's cost"}}
           if pretrained else {}),
        **({"dp_base": {**{key: dp_base_points[-1][key] for key in SUMMARY_KEYS}, "path": target_meta["dp_base"]["path"],
                        "privacy": target_meta["dp_base"].get("privacy"), "cost": target_meta["dp_base"]["cost"],
                        "per_request": [{key: t[key] for key in SUMMARY_KEYS} for t in dp_base_points]}}
           if dp_base_points else {}),
        "methods": methods,
        "table": [{"method": name, **{k: block[k] for k in ("forget_quality", "model_utility", "forget_rouge",
                                                              "privleak")},
                   "mia_min_k": block["mia"]["min_k"], "cost_ratio": block["cost"]["ratio"]}
                  for name, block in methods.items()],
        "cost": {"wall_s": round(time.perf_counter() - started, 3)},
        **({"gu_gaps": gaps} if (gaps := gu_gaps(methods)) else {}),
        "notes": prepared.notes,
        "warnings": forget_set_warnings(prepared.points),
    }
    if len(methods) == 1:  # docs/design.md: the keys at the top level when there is one method
        (only,) = methods.values()
        summary.update({k: v for k, v in only.items() if k not in ("cost", "requests")})
        summary["cost"].update(only["cost"])
        summary["request_metrics"] = only["requests"]
    return summary


# ----------------------------------------------------------------------------- seeds


def seed_spec(spec: UnlearnJob, offset: int) -> UnlearnJob:
    """The job at seed `spec.seed + offset`, one seed: model init, batch order and methods' randomness change;
    the fact world stays the job seed's (every seed forgets the same people)."""
    data = spec.data
    if data.source == "factworld" and data.seed is None:
        data = data.model_copy(update={"seed": spec.seed})
    return spec.model_copy(update={"seed": spec.seed + offset, "seeds": 1, "data": data})


def run_seeds(spec: UnlearnJob, prepared: PreparedUnlearn, folder: RunFolder, *, use_ray: bool, progress=None,
              fail_at=None) -> dict:
    """The job once per seed, each in `seeds/seed-<s>/` (a run folder of its own: spec, ledger, summary,
    report), then one summary: each metric's mean over seeds and its 95% bootstrap interval.

    A resumed run keeps the seeds an earlier attempt finished.
    """
    from palimpsest.spec.loading import dump_spec

    started = time.perf_counter()
    prepared.tokenizer.save_pretrained(str(folder.tokenizer))
    summaries, records = [], []
    subs = [RunFolder(folder.path / "seeds" / f"seed-{seed_spec(spec, offset).seed}") for offset in range(spec.seeds)]
    kept = [sub.finished for sub in subs]
    key = f"{folder.path.name} seeds"
    ui.begin(key, "seeds", spec.seeds, done=sum(kept))
    for offset, (sub, finished) in enumerate(zip(subs, kept)):
        one = seed_spec(spec, offset)
        sub.path.mkdir(parents=True, exist_ok=True)
        if finished:
            ui.say(f"seed {one.seed}: finished by an earlier attempt, kept")
            summary = sub.read_summary()
        else:
            ui.say(f"seed {one.seed} ({offset + 1} of {spec.seeds})")
            sub.start(kind="unlearn", name=one.name, seed=one.seed, spec_yaml=dump_spec(one))
            here = prepared if offset == 0 else prepare(one, saved_tokenizer=folder.tokenizer)
            summary = run(one, here, sub, use_ray=use_ray, progress=progress, fail_at=fail_at)
            sub.finish(summary)
            ui.update(key, advance=1, note=f"seed {one.seed}")
        summaries.append(summary)
        records += [{**r, "seed": one.seed} for r in sub.read_metrics()]
    ui.end(key)
    folder.write_metrics(records)
    return seed_summary(spec, summaries, started=started, folders=[str(folder.path / "seeds" / f"seed-{s['seed']}")
                                                                  for s in summaries])


def interval_keys(block: dict) -> list[str]:
    """The metrics of a summary block that get an interval over seeds (dotted paths into the block)."""
    keys = [key for key in SUMMARY_KEYS if key != "mia" and block.get(key) is not None]
    keys += [f"mia.{name}" for name in block.get("mia") or {}]
    return keys + [f"cost.{name}" for name in ("ratio", "flops_ratio", "flops_ratio_with_base")
                   if name in (block.get("cost") or {})]


def seed_summary(spec: UnlearnJob, summaries: list[dict], *, started: float, folders: list[str]) -> dict:
    """One summary of the seeds' summaries: numbers are means over seeds; the target, the DP base, each retain
    model and each method carry `intervals` (95% BCa bootstrap of the mean, `metrics.seeds`) and `per_seed`."""
    from palimpsest.metrics.seeds import CONFIDENCE, RESAMPLES, leaf, merge, summarise as over_seeds

    merged = merge(summaries)

    def attach(block: dict, blocks: list[dict]) -> None:
        stats = {key: over_seeds([leaf(b, key) for b in blocks]) for key in interval_keys(block)}
        block["intervals"] = {key: value["interval"] for key, value in stats.items()}
        block["per_seed"] = {key: value["values"] for key, value in stats.items()}

    attach(merged["target"], [s["target"] for s in summaries])
    if merged.get("dp_base"):
        attach(merged["dp_base"], [s["dp_base"] for s in summaries])
    for index, block in enumerate(merged["retain_models"]):
        attach(block, [s["retain_models"][index] for s in summaries])
    for name, block in merged["methods"].items():
        attach(block, [s["methods"][name] for s in summaries])
    merged.update({
        "status": "ok", "name": spec.name, "seed": spec.seed, "seeds": [s["seed"] for s in summaries],
        "seed_folders": folders,
        "intervals_are": f"mean over {len(summaries)} seeds; intervals: {CONFIDENCE:.0%} BCa bootstrap interval of "
                         f"the mean over seeds (scipy.stats.bootstrap, {RESAMPLES} resamples)",
        "cost": {"wall_s": round(time.perf_counter() - started, 3),
                 "seeds_wall_s": [s["cost"]["wall_s"] for s in summaries]},
        "notes": list(dict.fromkeys(n for s in summaries for n in s.get("notes") or [])),
        "warnings": list(dict.fromkeys(w for s in summaries for w in s.get("warnings") or [])),
        "skipped": sorted({name for s in summaries for name in s.get("skipped") or []}),
    })
    gaps = [s.get("gu_gaps") or {} for s in summaries]
    if any(gaps):  # GU's curve against its base method's, per seed, then over seeds
        merged["gu_gaps"] = {}
        for base in gaps[0]:
            found = [g.get(base) for g in gaps]
            stats = over_seeds([g["gap"] if g else None for g in found])
            merged["gu_gaps"][base] = {"gap": stats["mean"], "interval": stats["interval"], "per_seed": stats["values"],
                                       "seeds_with_overlap": sum(g is not None for g in found),
                                       "mean_curves": gu_gaps(merged["methods"]).get(base)}
    merged["table"] = [{"method": name, **{k: block[k] for k in ("forget_quality", "model_utility", "forget_rouge",
                                                                  "privleak")},
                        "mia_min_k": block["mia"]["min_k"], "cost_ratio": block["cost"]["ratio"],
                        "intervals": {k: block["intervals"][k] for k in ("forget_quality", "model_utility")}}
                       for name, block in merged["methods"].items()]
    if len(merged["methods"]) == 1:
        (only,) = merged["methods"].values()
        merged.update({k: v for k, v in only.items() if k not in ("cost", "requests")})
        merged["cost"].update(only["cost"])
    return merged


def search_progress(report: dict, last_request: int) -> dict | None:
    """A search's progress objectives in one report of the loop: a served request's scores, for each
    request but the last (its summary reports that one)."""
    from palimpsest.kinds import UNLEARN_REQUEST

    if "task_end" not in report or report["task_end"] >= last_request:
        return None
    hook = report.get("hook") or {}
    names = {name: name.replace("mia.", "mia_") for name in UNLEARN_REQUEST}
    return {**{name: hook[key] for name, key in names.items() if hook.get(key) is not None},
            "request": report["task_end"]}
