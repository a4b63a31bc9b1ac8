"""Unlearning cost: each method's wall time against retraining, beside its forget quality and model utility.

One unlearn job (the fact world's forget10 by default) run in this process: the target
and the retain model (retraining: the target's recipe on what remains) are trained
fresh in the bench's folder, then every method serves the requests. The wall times are
training only (`MethodResult.wall_s` leaves evaluation out), for the method and for the
retain model alike. dp2u needs an ε-DP target: it runs as a second job with
`target.privacy.epsilon` set, against that job's own retrain.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from palimpsest.bench import Row


def _run(document: dict, workdir: Path, name: str) -> dict:
    from palimpsest.runners import unlearn
    from palimpsest.run_folder import RunFolder
    from palimpsest.spec import parse_spec

    spec = parse_spec(document)
    folder = RunFolder.create(name, workdir / name)
    try:
        return unlearn.run(spec, unlearn.prepare(spec), folder, use_ray=False)
    finally:
        shutil.rmtree(folder.path, ignore_errors=True)


def measure(spec, workdir: Path, use_ray: bool) -> list[Row]:
    from palimpsest.spec.loading import load_spec

    bench = spec.benchmark
    job = load_spec(Path(bench.job), [f"{key}={value}" for key, value in bench.set.items()])
    document = job.model_dump(mode="json", exclude_none=True)
    document.update(scaling={**document["scaling"], "num_workers": 1}, cache=str(workdir / "unlearn-cache"),
                    ledger=None)
    document.pop("ledger", None)
    runs = [("open", document)]
    if bench.dp2u_epsilon is not None:
        # (per-example clipping replaces the global one under DP: the spec refuses both)
        target = {**document["target"], "privacy": {"epsilon": bench.dp2u_epsilon},
                  "training": {**document["target"]["training"], "max_grad_norm": None}}
        runs.append(("dp2u", {**document, "methods": ["dp2u"], "target": target}))
    rows: list[Row] = []
    for label, doc in runs:
        summary = _run(doc, workdir, f"bench-unlearn-{label}")
        retrain = summary["methods"].get("retrain")
        for name, block in summary["methods"].items():
            cost = block["cost"]
            case = name if label == "open" else f"{name} (target ε={bench.dp2u_epsilon:g})"
            rows.append(Row(
                "unlearn", case, cost["unlearn_wall_s"], "s", baseline="retraining (the retain model)",
                ratio=cost["ratio"], note=f"wall time; FLOPs ratio {cost['flops_ratio']:.3g}",
                extra={"forget_quality": block["forget_quality"], "model_utility": block["model_utility"],
                       "retrain_wall_s": cost["retrain_wall_s"], "flops_ratio": cost["flops_ratio"],
                       "target_forget_quality": summary["target"]["forget_quality"],
                       "target_model_utility": summary["target"]["model_utility"],
                       "retrain_forget_quality": retrain["forget_quality"] if retrain else None}))
            if name == "dp2u":
                # The paper counts training epochs; 6·N·D FLOPs is that count. The wall ratio above
                # also carries each job's fixed set-up (model build or load), which a tiny model
                # does not amortise.
                flops = sum(request["cost"]["train_flops"] for request in block["requests"])
                rows.append(Row("unlearn", f"{case}: training compute", flops, "FLOPs",
                                baseline="retraining (the retain model)", ratio=cost["flops_ratio"], target="<= 0.5",
                                meets=cost["flops_ratio"] <= 0.5, note="6·N·D over the requests"))
    return rows
