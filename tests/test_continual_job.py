"""`kind: continual` end to end: 2 Ray Train workers under DDP and ZeRO-2, fault recovery, the quickstart."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from typer.testing import CliRunner

from palimpsest.cli import app
from palimpsest.runners import continual
from palimpsest.run_folder import RunFolder
from palimpsest.spec import parse_spec
from palimpsest.train.config import FailAt

REPO = Path(__file__).resolve().parents[1]


def stream_spec(**overrides) -> dict:
    spec = {"kind": "continual", "name": "cl", "seed": 3,
            "stream": {"source": "factworld", "num_entities": 10, "attributes_per_entity": 3, "num_tasks": 2,
                       "general_samples": 8},
            "methods": ["naive"],
            "training": {"steps": 30, "batch_size": 16, "lr": 3e-3, "log_every": 10, "checkpoint_every": 10},
            "eval": {"eval_every": 10},
            "scaling": {"num_workers": 2}}
    for key, value in overrides.items():
        spec[key] = {**spec[key], **value} if isinstance(value, dict) else value
    return spec


def run_spec(document: dict, out: Path, *, fail_at: dict | None = None) -> dict:
    """Prepare and run through the runner (the CLI path minus argument parsing)."""
    spec = parse_spec(document)
    prepared = continual.prepare(spec)
    if fail_at:
        prepared.worker_config = prepared.worker_config.with_(fail_at=FailAt(**fail_at))
    folder = RunFolder.create(spec.name, out)
    summary = continual.run(spec, prepared, folder)
    folder.write_summary(summary)
    return summary


def train_losses(out: Path) -> list[float]:
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return [r["value"] for r in records if r["metric"] == "train_loss"]


@pytest.mark.integration
def test_two_workers_ddp_zero2_and_a_worker_failure(tmp_path, ray_session):
    """Done-means 3 and 4: a 2-task stream on 2 workers under DDP, ZeRO-2 and ZeRO-3 (same losses); with
    max_failures 1 a failure injected mid task 2 ends with the same accuracy matrix as the run without it."""
    ddp = run_spec(stream_spec(), tmp_path / "ddp")
    assert np.array(ddp["accuracy_matrix"]).shape == (2, 2)
    for key in ("acc", "bwt", "fwt", "forgetting", "min_acc", "wc_acc", "general_loss"):
        assert ddp[key] is not None, key
    for task in (0, 1):
        assert (tmp_path / "ddp" / "checkpoints" / "naive" / f"task-{task}" / "model.safetensors").is_file()

    zero2 = run_spec(stream_spec(training={"backend": "deepspeed", "deepspeed": {"zero_stage": 2}}),
                     tmp_path / "zero2")
    np.testing.assert_allclose(train_losses(tmp_path / "zero2"), train_losses(tmp_path / "ddp"), rtol=1e-3)
    np.testing.assert_allclose(zero2["accuracy_matrix"], ddp["accuracy_matrix"], atol=0.1)

    zero3 = run_spec(stream_spec(training={"backend": "deepspeed", "deepspeed": {"zero_stage": 3}}),
                     tmp_path / "zero3")
    np.testing.assert_allclose(train_losses(tmp_path / "zero3"), train_losses(tmp_path / "ddp"), rtol=1e-3)
    np.testing.assert_allclose(zero3["accuracy_matrix"], ddp["accuracy_matrix"], atol=0.1)
    from transformers import AutoModelForCausalLM  # the gathered ZeRO-3 export is a whole model

    AutoModelForCausalLM.from_pretrained(tmp_path / "zero3" / "checkpoints" / "naive" / "task-1")

    marker = tmp_path / "failed-once"
    faulty = run_spec(stream_spec(max_failures=1), tmp_path / "fault",
                      fail_at={"task": 1, "step": 15, "marker": str(marker)})
    assert marker.exists(), "the failure was not injected"
    assert faulty["accuracy_matrix"] == ddp["accuracy_matrix"]
    assert train_losses(tmp_path / "fault") == train_losses(tmp_path / "ddp")


def test_bad_method_parameter_exits_2_before_any_run_folder(tmp_path):
    job = tmp_path / "job.yaml"
    job.write_text(yaml.safe_dump(stream_spec(methods=[{"name": "replay", "params": {"bufer_size": 3}}],
                                              scaling={"num_workers": 1})))
    result = CliRunner().invoke(app, ["run", str(job), "--no-ray", "--out", str(tmp_path / "run")])
    assert result.exit_code == 2
    assert "bufer_size" in result.output and "buffer_size" in result.output
    assert not (tmp_path / "run").exists()


@pytest.mark.heavy
def test_a_failed_run_resumes_from_its_folder_to_the_same_result(tmp_path):
    """`palimpsest run --resume DIR` finishes an interrupted run from its last checkpoint."""
    from palimpsest.spec import dump_spec

    document = stream_spec(methods=["naive", "replay"], scaling={"num_workers": 1})
    spec = parse_spec(document)
    clean = tmp_path / "clean"
    assert CliRunner().invoke(app, ["run", str(write_yaml(tmp_path, document)), "--no-ray", "--out",
                                    str(clean)]).exit_code == 0

    # The same job dies in the middle of replay's second task (what Ctrl-C or a crash leaves).
    broken = RunFolder.create(spec.name, tmp_path / "broken")
    broken.write_spec(dump_spec(spec))
    broken.write_summary({"status": "failed", "kind": "continual", "name": spec.name, "seed": spec.seed,
                          "attempts_wall_s": [1000.0]})
    prepared = continual.prepare(spec)
    prepared.worker_config = prepared.worker_config.with_(
        fail_at=FailAt(method=1, task=1, step=15, marker=str(tmp_path / "marker")))
    with pytest.raises(RuntimeError, match="injected failure"):
        continual.run(spec, prepared, broken, use_ray=False)
    assert (tmp_path / "marker").exists()

    result = CliRunner().invoke(app, ["run", "--resume", str(broken.path), "--no-ray"])
    assert result.exit_code == 0, result.output
    resumed = json.loads((broken.path / "summary.json").read_text())
    expected = json.loads((clean / "summary.json").read_text())
    assert resumed["status"] == "ok" and resumed["resumed"] is True
    for method in ("naive", "replay"):
        assert resumed["methods"][method]["accuracy_matrix"] == expected["methods"][method]["accuracy_matrix"]
        assert (broken.path / "checkpoints" / method / "task-1" / "model.safetensors").is_file()
    assert train_losses(broken.path) == train_losses(clean)
    # The cost of a resumed run counts every attempt, not only the last one.
    assert resumed["attempts_wall_s"][0] == 1000.0 and len(resumed["attempts_wall_s"]) == 2
    assert 1000.0 < resumed["cost"]["wall_s"] < 1000.0 + resumed["attempts_wall_s"][1] + 1
    again = CliRunner().invoke(app, ["run", "--resume", str(broken.path), "--no-ray"])
    assert again.exit_code == 2 and "already finished" in again.output


def write_yaml(tmp_path: Path, document: dict) -> Path:
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(document))
    return path


@pytest.mark.parametrize("training, methods, words", [
    ({"backend": "deepspeed"}, ["naive", "fpf"], ["methods[1]", "fpf", "outside the optimizer", "runs on: ddp"]),
    ({"backend": "deepspeed", "deepspeed": {"zero_stage": 3}}, ["replay", "lwf"], ["lwf", "zero_stage 3"]),
    ({"backend": "deepspeed", "deepspeed": {"zero_stage": 2}}, ["ewc"], ["ewc", "zero_stage 2", "zero_stage 1"]),
    ({"backend": "ddp"}, [{"name": "lora"}], None),
    ({}, ["gere"], ["gere", "general"]),
    ({"backend": "deepspeed", "deepspeed": {"zero_stage": 4}}, ["naive"], ["zero_stage", "less than or equal to 3"]),
])
def test_backend_and_method_combinations_that_cannot_work_are_refused(training, methods, words):
    from palimpsest.spec import SpecError

    document = stream_spec(training=training, methods=methods)
    if words is None:  # the lora method with the model's own LoRA
        document["model"], words = {"lora": {"r": 4}}, ["lora", "remove model.lora"]
    if methods == ["gere"]:
        document["stream"]["general_replay_samples"] = 0
    with pytest.raises(SpecError) as caught:
        parse_spec(document)
    (problem,) = caught.value.problems
    for word in words:
        assert word in problem


def test_every_method_backend_conflict_and_parameter_problem_is_reported_at_once():
    from palimpsest.spec import SpecError

    document = stream_spec(training={"backend": "deepspeed", "deepspeed": {"zero_stage": 3}, "batch_size": 15},
                           methods=["lwf", "ewc", {"name": "replay", "params": {"bufer_size": 3, "form": "err"}},
                                    {"name": "kappatune", "params": {"fraction": 2}},
                                    {"name": "lora", "params": {"r": 0}}])
    document["seed"] = -1  # a field error too: the cross-section problems are still all listed
    with pytest.raises(SpecError) as caught:
        parse_spec(document)
    text = "\n".join(caught.value.problems)
    for expected in ("seed:", "training.batch_size: 15 must be a multiple", "methods[0]: lwf cannot run",
                     "methods[1]: ewc cannot run", "methods[2].params.bufer_size: unknown parameter",
                     "did you mean 'buffer_size'", "methods[2].params.form: must be one of er, ratio",
                     "methods[3].params.fraction: must be", "methods[4].params.r: must be int ≥ 1"):
        assert expected in text, (expected, text)


@pytest.mark.parametrize("params, words", [
    ({"lamda": 3}, ["methods[0].params.lamda", "did you mean 'lam'"]),
    ({"lam": "lots"}, ["methods[0].params.lam", "must be float ≥ 0", "'lots'"]),
    ({"fisher_samples": 0}, ["methods[0].params.fisher_samples", "int ≥ 1"]),
    ({"fisher_samples": True}, ["methods[0].params.fisher_samples"]),
    ({"gamma": 1.5}, ["methods[0].params.gamma", "≤ 1"]),
])
def test_validate_refuses_bad_method_parameters_naming_the_field(params, words, tmp_path):
    job = write_yaml(tmp_path, stream_spec(methods=[{"name": "ewc", "params": params}]))
    result = CliRunner().invoke(app, ["validate", str(job)])
    assert result.exit_code == 2
    for word in words:
        assert word in result.output, result.output


@pytest.mark.heavy
def test_several_methods_without_ray_write_one_block_each(tmp_path):
    out = tmp_path / "run"
    job = tmp_path / "job.yaml"
    job.write_text(yaml.safe_dump(stream_spec(methods=["naive", "joint"], scaling={"num_workers": 1},
                                              training={"steps": 10})))
    result = CliRunner().invoke(app, ["run", str(job), "--no-ray", "--out", str(out)])
    assert result.exit_code == 0, result.output
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary["methods"]) == {"naive", "joint"}
    assert "accuracy_matrix" not in summary  # several methods: one block each, no top-level matrix
    assert [row["method"] for row in summary["table"]] == ["naive", "joint"]
    assert summary["table"][1]["bwt"] == summary["methods"]["joint"]["bwt"]
    for name in ("accuracy_matrix_naive.png", "continual_eval_joint.png", "methods.png"):
        assert (out / "plots" / name).is_file(), name
    assert "| naive |" in (out / "report.md").read_text() and "ACC" in result.output


@pytest.mark.integration
@pytest.mark.slow
def test_quickstart_replay_forgets_less_than_naive(tmp_path, ray_session):
    """Done-means 5: the shipped quickstart, with its fixed seed: replay's BWT is higher than naive's."""
    out = tmp_path / "quickstart"
    result = CliRunner().invoke(app, ["run", str(REPO / "jobs" / "quickstart.yaml"), "--out", str(out)])
    assert result.exit_code == 0, result.output
    summary = json.loads((out / "summary.json").read_text())
    methods = summary["methods"]
    assert set(methods) == {"naive", "replay", "ewc"}
    assert methods["replay"]["bwt"] > methods["naive"]["bwt"], {m: b["bwt"] for m, b in methods.items()}
    assert "BWT" in result.output


# Every job file (settings files beside them, e.g. jobs/rl/agent_ppo.yaml, have no kind: and are read by jobs).
SHIPPED = sorted(p.relative_to(REPO).as_posix() for p in (REPO / "jobs").rglob("*.yaml")
                 if "kind" in (yaml.safe_load(p.read_text()) or {}))

# One shipped job per code path runs end to end on a tiny budget (below); every other job takes the path of one
# of them (another ε, LoRA or not, another split, another method's parameters, a search's base job) or runs in
# another test (RUN_IN), and is validated as written, as `palimpsest validate` does. A new job file fails the
# first test below until it is placed.
RUN_END_TO_END = {
    "jobs/quickstart.yaml": "continual on the fact world: several methods, replay and EWC",
    "jobs/continual/real_data.yaml": "continual on Hugging Face datasets",
    "jobs/private/factworld_full_eps1.yaml": "train under DP-SGD, per-person unit, the whole model",
    "jobs/private/factworld_lora_eps8.yaml": "train under DP-SGD with LoRA",
    "jobs/private/sweep_epsilon.yaml": "privacy_sweep, checkpoints in a bucket",
    "jobs/rl/rewriting_small.yaml": "rl through RLlib, held-out settings",
    "jobs/bench/deepspeed.yaml": "bench: deepspeed", "jobs/bench/ppo.yaml": "bench: ppo (skipped without Ray)",
    "jobs/bench/private.yaml": "bench: private", "jobs/bench/rllib.yaml": "bench: rllib",
    "jobs/bench/unlearn.yaml": "bench: unlearn",
    "jobs/unlearn/factworld_forget01.yaml": "unlearn: every method family, GU, RMU, GS-LoRA",
    "jobs/unlearn/dp2u_eps8.yaml": "unlearn from a DP target: dp2u, per-method steps and lr, seeds",
    "jobs/unlearn/tofu_files.yaml": "unlearn on the shipped TOFU-format sample files",
}
# A section `palimpsest bench` runs end to end in another test (tests/test_bench.py; POPGym's rows in
# tests/test_bench_envs.py): there, and validated here.
RUN_IN = {
    "jobs/bench/loop.yaml": "tests/test_bench.py::test_bench_joins_specs_into_one_table_bench_json_and_a_plot",
    "jobs/bench/envs.yaml": "tests/test_bench.py::test_bench_joins_specs_into_one_table_bench_json_and_a_plot",
}
TAKES_THE_PATH_OF = {
    "jobs/continual/deepspeed_zero2.yaml": "jobs/quickstart.yaml",  # ZeRO-2/3 on 2 workers: test_two_workers_...
    "jobs/continual/deepspeed_zero3.yaml": "jobs/quickstart.yaml",
    "jobs/continual/ewc.yaml": "jobs/quickstart.yaml",  # each method's run: tests/test_continual*.py
    "jobs/continual/fpf.yaml": "jobs/quickstart.yaml",
    "jobs/continual/gere.yaml": "jobs/quickstart.yaml",
    "jobs/continual/joint.yaml": "jobs/quickstart.yaml",
    "jobs/continual/kappatune.yaml": "jobs/quickstart.yaml",
    "jobs/continual/l2.yaml": "jobs/quickstart.yaml",
    "jobs/continual/lora.yaml": "jobs/quickstart.yaml",
    "jobs/continual/lwf.yaml": "jobs/quickstart.yaml",
    "jobs/continual/naive.yaml": "jobs/quickstart.yaml",
    "jobs/continual/replay.yaml": "jobs/quickstart.yaml",
    "jobs/tune/continual_ewc.yaml": "jobs/quickstart.yaml",  # searches themselves: tests/test_tune.py
    "jobs/train/memorise_facts.yaml": "jobs/private/factworld_full_eps1.yaml",  # without DP: tests/test_train_job.py
    "jobs/private/factworld_full_eps8.yaml": "jobs/private/factworld_full_eps1.yaml",
    "jobs/private/factworld_full_open.yaml": "jobs/private/factworld_full_eps1.yaml",
    "jobs/private/factworld_lora_eps1.yaml": "jobs/private/factworld_lora_eps8.yaml",
    "jobs/private/factworld_lora_open.yaml": "jobs/private/factworld_lora_eps8.yaml",
    "jobs/tune/private_clipping.yaml": "jobs/private/factworld_full_eps1.yaml",
    "jobs/rl/paper_matrix.yaml": "jobs/rl/rewriting_small.yaml",
    "jobs/rl/quick_cpu.yaml": "jobs/rl/rewriting_small.yaml",
    "jobs/tune/rl_agents.yaml": "jobs/rl/rewriting_small.yaml",
    "jobs/tune/rl_ppo_lstm.yaml": "jobs/rl/rewriting_small.yaml",
    "jobs/unlearn/factworld_forget05.yaml": "jobs/unlearn/factworld_forget01.yaml",
    "jobs/unlearn/factworld_forget10.yaml": "jobs/unlearn/factworld_forget01.yaml",
    "jobs/unlearn/gu_sweep.yaml": "jobs/unlearn/factworld_forget01.yaml",  # per-method lr: dp2u_eps8's path
    "jobs/unlearn/sequence3.yaml": "jobs/unlearn/factworld_forget01.yaml",  # request sequences: test_unlearn_job
    "jobs/unlearn/dp2u_eps1.yaml": "jobs/unlearn/dp2u_eps8.yaml",
    "jobs/tune/unlearn_npo_pareto.yaml": "jobs/unlearn/factworld_forget01.yaml",
}


def _kind(job: str) -> str:
    return yaml.safe_load((REPO / job).read_text())["kind"]


def test_each_shipped_job_runs_end_to_end_or_takes_the_path_of_one_that_does():
    placed = [*RUN_END_TO_END, *TAKES_THE_PATH_OF, *RUN_IN]
    assert len(placed) == len(set(placed)) and sorted(placed) == SHIPPED, "place each job file in one list"
    for job, runs in TAKES_THE_PATH_OF.items():
        assert runs in RUN_END_TO_END and _kind(runs) == _kind(job), (job, runs)
    for job, test in RUN_IN.items():
        module, name = test.split("::")
        assert f"def {name}(" in (REPO / module).read_text(), (job, test)


# A private job's noise is calibrated for the budget the end-to-end run gives it (as written, the PRV accountant
# takes a minute per job over thousands of steps).
TINY_PRIVATE = ["training.steps=3", "training.batch_size=4", "scaling.num_workers=1", "data.num_entities=6"]


@pytest.mark.parametrize("job", sorted([*TAKES_THE_PATH_OF, *RUN_IN]))
def test_every_other_shipped_job_validates(job, monkeypatch, tmp_path):
    """`palimpsest validate` on the file as shipped: its fields, and for private, unlearn and rl jobs its data
    loaded and its noise calibrated as `run` would (a private job's on the tiny budget, see TINY_PRIVATE)."""
    from palimpsest.spec.loading import apply_overrides

    monkeypatch.chdir(REPO)  # examples name files relative to the repository root
    document = yaml.safe_load((REPO / job).read_text())
    path = job
    if document.get("privacy"):
        assert apply_overrides(document, TINY_PRIVATE) == []
        path = str(tmp_path / Path(job).name)
        Path(path).write_text(yaml.safe_dump(document))
    result = CliRunner().invoke(app, ["validate", path])
    assert result.exit_code == 0, result.output
    assert f"ok: {path} (kind: {document['kind']})" in result.output, result.output


@pytest.mark.parametrize("job", [pytest.param(job, marks=[pytest.mark.integration] if _kind(job) == "rl" else [])
                                 for job in sorted(RUN_END_TO_END)])  # rl: RLlib on the shared Ray session
@pytest.mark.heavy
def test_one_shipped_job_per_code_path_runs_on_a_tiny_budget(job, tmp_path, monkeypatch, tmp_path_factory,
                                                            request):
    """One example per code path runs end to end (without Ray, a few steps) — not just validates."""
    monkeypatch.chdir(REPO)  # examples name files relative to the repository root
    document = yaml.safe_load((REPO / job).read_text())
    # A search's job runs as written under `run` (its tune: section is left to `palimpsest tune`, which
    # tests/test_tune.py runs); here its job on a tiny budget like any other.
    if document["kind"] == "rl":  # RLlib needs Ray: every setting, one agent, one seed, a few hundred steps
        request.getfixturevalue("ray_session")
        args = ["run", job, "--out", str(tmp_path / "run")]
        for item in ["agents=[gru]", "seeds=1", "parameters=2000", "budget.env_steps=128", "ppo.num_env_runners=0",
                     "ppo.train_batch_size=128", "ppo.minibatch_size=64", "ppo.num_epochs=1",
                     "ppo.num_envs_per_env_runner=2", "evaluation.episodes=4", "evaluation.every=1",
                     "evaluation.test_episodes=4"]:
            args += ["--set", item]
        result = CliRunner().invoke(app, args)
        assert result.exit_code == 0, result.output
        assert json.loads((tmp_path / "run" / "summary.json").read_text())["trials"] == len(document["envs"])
        return
    if document["kind"] == "bench":  # each benchmark on a tiny budget; --no-ray: the Ray cases say they skipped
        tiny = {"loop": {"steps": 5, "num_entities": 10, "batch_size": 4, "repeats": 1},
                "deepspeed": {"steps": 5, "num_entities": 10, "batch_size": 4, "repeats": 1},
                "private": {"steps": 5, "num_entities": 10, "batch_size": 4, "repeats": 1},
                "unlearn": {"set": {"data.num_entities": 10, "target.training.steps": 3, "training.steps": 3,
                                    "target.pretraining.steps": 3, "target.pretraining.batch_size": 4,
                                    "target.pretraining.warmup_steps": 0, "data.real_authors": 4,
                                    "data.world_facts": 4,
                                    "target.training.batch_size": 4, "target.training.warmup_steps": 0,
                                    "training.batch_size": 4, "eval.max_examples": 4, "eval.max_new_tokens": 8}},
                "envs": {"batches": [8], "batch_steps": 3, "single_steps": 20, "repeats": 1},
                "rllib": {}, "ppo": {}}
        document["benchmarks"] = [{**b, **tiny[b["type"]]} for b in document["benchmarks"]]
        path = tmp_path / "bench.yaml"
        path.write_text(yaml.safe_dump(document))
        result = CliRunner().invoke(app, ["run", str(path), "--no-ray", "--out", str(tmp_path / "run")])
        assert result.exit_code == 0, result.output
        rows = json.loads((tmp_path / "run" / "bench.json").read_text())["rows"]
        assert rows and {r["section"] for r in rows} == {b["type"] for b in document["benchmarks"]}
        return
    overrides = ["training.steps=3", "training.checkpoint_every=null", "eval.eval_every=null",
                 "scaling.num_workers=1", "training.batch_size=4"]
    if document.get("stream", {}).get("source") == "factworld":
        overrides += ["stream.num_entities=6", "stream.general_samples=4"]
    if document.get("data", {}).get("source") == "factworld":
        overrides += ["data.num_entities=6"]
    if document["kind"] == "unlearn":  # the target's and the retain models' training too, in a cache the jobs share
        cache = tmp_path_factory.getbasetemp() / "shipped-unlearn-cache"
        overrides += ["target.training.steps=3", "target.training.batch_size=4", "target.training.warmup_steps=0",
                      f"cache={cache}", "eval.max_examples=4", "ledger=null", "target.pretraining.steps=3",
                      "target.pretraining.batch_size=4", "target.pretraining.warmup_steps=0"]
        if document["data"]["source"] == "factworld":
            overrides += ["data.real_authors=4", "data.world_facts=4"]
        overrides += ["seeds=1", "eval.max_new_tokens=8"]  # a comparison job's seeds and sweeps: once, briefly
        if any(isinstance(m, dict) and "steps" in m for m in document["methods"]):  # entries with their own steps
            document["methods"] = [{**m, "steps": 3} if isinstance(m, dict) and "steps" in m else m
                                   for m in document["methods"]]
            job = str(tmp_path / Path(job).name)
            Path(job).write_text(yaml.safe_dump(document))
    bucket = None
    if document["kind"] == "privacy_sweep":  # its train job's fields, at two points; checkpoints in a bucket
        overrides = [f"job.{item}" for item in overrides if not item.startswith("stream.")]
        bucket = request.getfixturevalue("object_store")
        overrides += ["job.data.num_entities=10", "epsilons=[8.0, null]",
                      f"job.storage_path={bucket.uri('sweeps')}"]
    if "tune" in document:  # eval_every=null leaves ASHA nothing to act on
        overrides += ["tune.scheduler=fifo"]
    args = ["run", job, "--no-ray", "--out", str(tmp_path / "run")]
    for item in overrides:
        args += ["--set", item]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["status"] == "ok"
    if bucket is not None:  # each point's checkpoints and folder under STORAGE/<sweep>/<label>/, nothing else
        files = bucket.files("sweeps")
        assert {key.split("/")[0] for key in files} == {"run"}, sorted(files)
        for label in ("epsilon-8", "not-private"):
            assert f"run/{label}/summary.json" in files
            assert any(key.startswith(f"run/{label}/checkpoint_") and key.endswith("checkpoint_manifest.json")
                       for key in files), sorted(files)
        assert not (tmp_path / "run" / "epsilon-8" / ".storage-mirror").exists()
