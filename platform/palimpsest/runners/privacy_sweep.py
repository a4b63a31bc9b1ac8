"""`kind: privacy_sweep` — the same train job at several ε: what privacy costs in accuracy and buys in leakage.

Each point is a whole `train` run in its own sub-folder (`epsilon-8/`, `not-private/`),
with its spec, summary, checkpoints and report; the sweep's summary gathers ε spent,
membership-inference AUC and answer accuracy per point and draws them against ε.
A resumed sweep keeps the points that finished and runs the rest.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from palimpsest import progress as ui
from palimpsest.data import DataError
from palimpsest.privacy import released_privacy
from palimpsest.runners import train
from palimpsest.run_folder import RunFolder
from palimpsest.spec import PrivacySweepJob, dump_spec, parse_spec
from palimpsest.storage import join


@dataclass
class Point:
    label: str
    epsilon: float | None
    spec: object  # TrainJob
    prepared: train.PreparedTrain


def prepare(spec: PrivacySweepJob, *, saved_tokenizer=None) -> list[Point]:
    """Every point's data and calibrated σ (an unreachable ε fails here, before any folder).

    Raises:
        DataError: a point cannot run (its message names the field).
    """
    points = []
    for i, (label, epsilon, document) in enumerate(spec.points()):
        job = parse_spec(document, origin=label)
        saved = saved_tokenizer.parent / label / "tokenizer" if saved_tokenizer else None
        try:
            prepared = train.prepare(job, saved_tokenizer=saved if saved and saved.is_dir() else None)
        except DataError as error:  # name the sweep's own field: the point, not a privacy.epsilon it lacks
            raise DataError(f"epsilons[{i}] ({label}): {error}") from None
        points.append(Point(label, epsilon, job, prepared))
    return points


def run(spec: PrivacySweepJob, points: list[Point], folder: RunFolder, *, use_ray: bool = True) -> dict:
    started = time.perf_counter()
    rows, blocks = [], []
    finished = [RunFolder(folder.path / point.label).finished for point in points]
    key = f"{folder.path.name} points"
    ui.begin(key, "sweep points", len(points), done=sum(finished))
    for point, done in zip(points, finished):
        child = RunFolder(folder.path / point.label)
        job = point.spec
        if job.storage_path:  # each sweep's points apart on a shared storage_path: STORAGE/<sweep>/<label>/
            job = job.model_copy(update={"storage_path": join(job.storage_path, folder.path.name)})
        if not done:  # a sweep resumed after an interrupt reruns unfinished points from the start
            child.path.mkdir(parents=True, exist_ok=True)
            child.start(kind="train", name=job.name, seed=job.seed, spec_yaml=dump_spec(job))
            ui.say(f"sweep point {point.label}")
            ui.update(key, note=point.label)
            summary = train.run(job, point.prepared, child, use_ray=use_ray)
            child.finish(summary)
            ui.update(key, advance=1)
        ended = child.read_summary()
        rows.append(_row(point, ended))
        blocks.append(ended.get("privacy"))
    ui.end(key)
    return {
        "status": "ok",
        "kind": "privacy_sweep",
        "name": spec.name,
        "seed": spec.seed,
        "steps": spec.job.training.steps,
        "points": rows,
        # every point's model is released from the same data: their budgets compose
        "privacy": released_privacy(blocks),
        "cost": {"wall_s": round(time.perf_counter() - started, 3),
                 "train_tokens": sum(r["train_tokens"] for r in rows),
                 "train_flops": sum(r["train_flops"] for r in rows)},
    }


def _row(point: Point, summary: dict) -> dict:
    privacy = summary.get("privacy") or {}
    mia = summary.get("mia") or {}
    return {
        "point": point.label,
        "epsilon_target": point.epsilon,
        "epsilon": privacy.get("epsilon"),
        "noise_multiplier": privacy.get("noise_multiplier"),
        "lr": point.spec.training.lr,
        "guarantee": privacy.get("guarantee"),
        "mia_auc": {name: attack["auc"] for name, attack in (mia.get("attacks") or {}).items()},
        "untrained_auc": mia.get("untrained_auc") or {},
        "answer_accuracy": {split: m["answer_accuracy"] for split, m in summary["final"].items()},
        "rule_accuracy": summary.get("rule_accuracy"),
        "loss": {split: m["loss"] for split, m in summary["final"].items()},
        "step_s": summary["cost"]["step_s"],
        "train_tokens": summary["cost"]["train_tokens"],
        "train_flops": summary["cost"]["train_flops"],
    }
