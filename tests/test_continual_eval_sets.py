"""What R is measured on: per-task eval sets, tokenizers fitted to training data only, disjoint general pools."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from palimpsest.cli import app
from palimpsest.runners import continual
from palimpsest.spec import SpecError, parse_spec

DATA = Path(__file__).resolve().parent / "data"


def datasets_stream(eval_files: bool = True, **stream) -> dict:
    tasks = []
    for t in (0, 1):
        task = {"source": "file", "path": str(DATA / f"stream_task{t}.jsonl")}
        if eval_files:
            task["eval_path"] = str(DATA / f"stream_task{t}_eval.jsonl")
        tasks.append(task)
    return {"kind": "continual", "name": "evalsets", "seed": 1,
            "stream": {"source": "datasets", "tasks": tasks, **stream}, "methods": ["naive"],
            "training": {"steps": 80, "batch_size": 8, "lr": 1e-2, "log_every": 40}, "eval": {"eval_every": 40}}


def run_cli(document: dict, out: Path) -> dict:
    job = out.parent / f"{out.name}.yaml"
    job.write_text(yaml.safe_dump(document))
    result = CliRunner().invoke(app, ["run", str(job), "--no-ray", "--out", str(out)])
    assert result.exit_code == 0, result.output
    return json.loads((out / "summary.json").read_text())


@pytest.mark.heavy
def test_a_stream_is_evaluated_on_its_eval_files_and_the_summary_says_so(tmp_path):
    held_out = run_cli(datasets_stream(), tmp_path / "held_out")
    on_train = run_cli(datasets_stream(eval_files=False, eval_on_train=True), tmp_path / "on_train")
    # Same training either way (the tokenizer never sees the eval files): the trained facts are recalled,
    # while the held-out facts, about other people, cannot be.
    assert on_train["accuracy_matrix"][0][0] > 0.3, on_train["accuracy_matrix"]
    assert held_out["accuracy_matrix"] == [[0.0, 0.0], [0.0, 0.0]]
    assert held_out["eval_sets"] == {"task0": f"eval_path {DATA / 'stream_task0_eval.jsonl'}",
                                     "task1": f"eval_path {DATA / 'stream_task1_eval.jsonl'}"}
    assert on_train["eval_sets"]["task0"] == "its training examples (stream.eval_on_train)"
    assert "R is measured on" in (tmp_path / "held_out" / "report.md").read_text()
    # Every exported checkpoint says which prompt format it answers.
    prompt = json.loads((tmp_path / "held_out" / "checkpoints" / "naive" / "task-1" / "palimpsest_prompt.json").read_text())
    assert prompt["prompt_template"] == "Question: {question}\nAnswer:" and prompt["answer_ends_with_eos"]


def test_a_task_without_an_eval_set_is_refused_unless_the_user_opts_in():
    with pytest.raises(SpecError) as caught:
        parse_spec(datasets_stream(eval_files=False))
    (problem,) = caught.value.problems
    assert "stream: tasks [0, 1] have no eval set" in problem and "eval_on_train" in problem


def test_the_tokenizer_is_trained_on_training_data_only():
    with_eval = continual.prepare(parse_spec(datasets_stream()))
    without = continual.prepare(parse_spec(datasets_stream(eval_files=False, eval_on_train=True)))
    assert with_eval.tokenizer.get_vocab() == without.tokenizer.get_vocab()
    assert with_eval.worker_config.tasks == without.worker_config.tasks


def test_general_replay_and_general_evaluation_pools_never_overlap(tmp_path):
    fact_world = parse_spec({"kind": "continual", "stream": {"source": "factworld", "num_entities": 6,
                                                            "attributes_per_entity": 2, "num_tasks": 2,
                                                            "general_samples": 10, "general_replay_samples": 12},
                             "methods": ["gere"]})
    config = continual.prepare(fact_world).worker_config
    scored, replayable = set(config.eval_sets["general"]), set(config.general)
    assert len(scored) == 10 and len(replayable) == 12 and not scored & replayable

    config = continual.prepare(parse_spec(datasets_stream(general_path=str(DATA / "general.txt")))).worker_config
    scored, replayable = set(config.eval_sets["general"]), set(config.general)
    lines = [line for line in (DATA / "general.txt").read_text().splitlines() if line.strip()]
    assert len(scored) + len(replayable) == len(set(lines)) and not scored & replayable

    # GeRe's batches draw general samples from the replay pool only.
    from palimpsest.models import build_model
    from palimpsest.train.hooks import LoopContext
    from synthetic import make_method

    method = make_method("gere", replay_ratio=0.5, num_general=6)
    ctx = LoopContext(model=build_model(config.model), tasks=config.tasks, task=0, seed=0, batch_size=8, steps_per_task=10,
                      pad_id=0, eos_id=2, general=config.general)
    method.before_task(ctx)
    for step in range(5):
        drawn = method.batch(ctx, step).parts["general"]
        assert drawn and set(drawn) <= replayable and not set(drawn) & scored


@pytest.mark.heavy
def test_min_acc_is_null_and_explained_when_only_task_ends_are_evaluated(tmp_path):
    document = datasets_stream(eval_files=False, eval_on_train=True)
    document["training"]["steps"] = 10
    document["eval"] = {"eval_every": None}
    summary = run_cli(document, tmp_path / "task_ends")
    assert summary["min_acc"] is None and summary["wc_acc"] is None
    assert "eval_every is null" in summary["min_acc_note"]
    report = (tmp_path / "task_ends" / "report.md").read_text()
    assert "min-ACC" in report and "eval_every is null" in report


def test_continual_jobs_evaluate_periodically_by_default():
    spec = parse_spec({"kind": "continual", "stream": {"source": "factworld"}, "methods": ["naive"],
                       "training": {"steps": 50}})
    assert spec.eval.eval_every == 5


def test_fwt_baseline_of_a_pretrained_model_is_a_random_init_of_its_architecture(tmp_path):
    """GEM's b is the accuracy at random initialisation, not of the pretrained weights."""
    import torch

    from palimpsest.models import build_model
    from synthetic import tiny_model, tiny_model_cfg

    tiny_model(seed=5).save_pretrained(tmp_path / "pretrained")
    cfg = {**tiny_model_cfg(seed=1), "preset": None, "pretrained": str(tmp_path / "pretrained")}
    pretrained, random_a, random_b = build_model(cfg), build_model(cfg, random_init=True), build_model(cfg, random_init=True)
    weights = "model.layers.0.self_attn.q_proj.weight"
    assert not torch.equal(pretrained.state_dict()[weights], random_a.state_dict()[weights])
    assert torch.equal(random_a.state_dict()[weights], random_b.state_dict()[weights])  # seeded
    spec = parse_spec({"kind": "continual", "stream": {"source": "factworld"}, "methods": ["naive"]})
    assert spec.eval.fwt_baseline == "random_init"
