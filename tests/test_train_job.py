"""`kind: train` end to end through the CLI: run folder contract, real-data paths, Ray Train workers."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from palimpsest.cli import app
from palimpsest.data import export_tofu, generate_world

RUN_FILES = ("spec.yaml", "env.json", "metrics.jsonl", "summary.json", "report.md")


def write_job(tmp_path: Path, **fields) -> Path:
    job = {"kind": "train", "name": "t", "seed": 1,
           "data": {"source": "factworld", "num_entities": 8, "attributes_per_entity": 3, "split": "retain90"},
           "training": {"steps": 20, "batch_size": 8, "log_every": 5, "checkpoint_every": 10},
           "eval": {"eval_every": 10}}
    for key, value in fields.items():
        replaces = key == "data" and "source" in value  # another source: drop the fact-world fields
        job[key] = {**job.get(key, {}), **value} if isinstance(value, dict) and not replaces else value
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(job))
    return path


def run_cli(*args):
    result = CliRunner().invoke(app, ["run", *map(str, args)])
    assert result.exception is None or isinstance(result.exception, SystemExit), result.output
    return result


def reload_and_evaluate(run_dir: Path, split_items):
    """Load the exported checkpoint as a new user would and recompute the eval loss."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from palimpsest.train.batching import tokenize_qa
    from palimpsest.train.evaluate import evaluate_qa

    final = run_dir / "checkpoints" / "final"
    model = AutoModelForCausalLM.from_pretrained(final)
    tokenizer = AutoTokenizer.from_pretrained(final)
    return evaluate_qa(model, tokenize_qa(tokenizer, split_items), pad_id=tokenizer.pad_token_id,
                       eos_id=tokenizer.eos_token_id)


@pytest.mark.heavy
def test_run_without_ray_writes_the_whole_run_folder(tmp_path):
    out = tmp_path / "run"
    result = run_cli(write_job(tmp_path), "--no-ray", "--out", out)
    assert result.exit_code == 0, result.output
    for name in RUN_FILES:
        assert (out / name).is_file(), name
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "ok" and summary["kind"] == "train"
    assert set(summary["final"]) == {"train", "holdout"}
    assert summary["cost"]["train_tokens"] > 0 and summary["cost"]["train_flops"] > 0
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert {"step", "task", "split", "metric", "value"} <= set(records[0])
    assert {r["step"] for r in records if r["metric"] == "answer_accuracy"} == {10, 20}
    assert (out / "plots" / "train_loss.png").is_file() and (out / "plots" / "answer_accuracy.png").is_file()
    resolved = yaml.safe_load((out / "spec.yaml").read_text())
    assert resolved["seed"] == 1 and resolved["model"]["preset"] == "tiny-llama"
    env = json.loads((out / "env.json").read_text())
    assert env["versions"]["torch"] and env["versions"]["ray"]
    assert "results after 20 steps" in result.output
    # `report` redraws from the folder alone
    (out / "report.md").unlink()
    assert CliRunner().invoke(app, ["report", str(out)]).exit_code == 0
    assert "| train |" in (out / "report.md").read_text()


@pytest.mark.heavy
def test_tofu_format_file_trains_and_checkpoint_reproduces_eval_loss(tmp_path):
    world = generate_world(seed=4, num_entities=6, attributes_per_entity=2)
    train_file, eval_file = tmp_path / "train.json", tmp_path / "eval.jsonl"
    export_tofu(world.facts[:8], train_file)
    export_tofu(world.facts[8:], eval_file)
    job = write_job(tmp_path, data={"source": "file", "path": str(train_file), "eval_path": str(eval_file)})
    out = tmp_path / "run"
    assert run_cli(job, "--no-ray", "--out", out).exit_code == 0
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary["final"]) == {"train", "eval"}
    again = reload_and_evaluate(out, world.facts[8:])
    assert again["loss"] == pytest.approx(summary["final"]["eval"]["loss"], rel=1e-5)


def test_bad_data_file_exits_2_before_any_run_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    broken = tmp_path / "broken.jsonl"
    broken.write_text('{"question": "q1", "answer": "a1"}\n{"question": "q2"}\n')
    result = run_cli(write_job(tmp_path, data={"source": "file", "path": str(broken)}), "--no-ray")
    assert result.exit_code == 2
    assert "broken.jsonl" in result.output and "answer" in result.output
    assert "Traceback" not in result.output
    assert not (tmp_path / "runs").exists()


@pytest.mark.integration
def test_impossible_resources_exit_2_before_any_run_folder(tmp_path, ray_session):
    result = run_cli(write_job(tmp_path, scaling={"num_workers": 8}), "--out", tmp_path / "run")
    assert result.exit_code == 2 and "each job needs 8 × (1 CPU), but the Ray cluster's nodes hold (2 CPU) and it " \
        "has no autoscaler to add more" in " ".join(result.output.split()), result.output
    assert not (tmp_path / "run").exists()


def test_failed_run_records_status_and_error(tmp_path, monkeypatch):
    from palimpsest.runners import train

    def explode(*args, **kwargs):
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(train, "run", explode)
    out = tmp_path / "run"
    result = run_cli(write_job(tmp_path), "--no-ray", "--out", out)
    assert result.exit_code == 1
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "failed" and "disk on fire" in summary["error"]


@pytest.fixture(scope="module")
def two_worker_run(tmp_path_factory, ray_session):
    """One job on 2 Ray Train workers (DDP/gloo), shared by the reload check and the learning threshold.

    100 steps: the training facts are at answer accuracy 1.0 from step 50 (0.1 at step 25; measured 2026-12-07 on
    one worker, the same global batches), so the threshold below keeps a 2x margin and still fails a learner at
    a quarter of the speed."""
    tmp_path = tmp_path_factory.mktemp("two-workers")
    job = write_job(
        tmp_path,
        data={"num_entities": 20, "attributes_per_entity": 5, "split": "retain90"},
        training={"steps": 100, "batch_size": 32, "lr": 3e-3, "warmup_steps": 20, "log_every": 50,
                  "checkpoint_every": 50},
        eval={"eval_every": 50},
        scaling={"num_workers": 2},
    )
    out = tmp_path / "run"
    result = run_cli(job, "--out", out)
    assert result.exit_code == 0, result.output
    return out, json.loads((out / "summary.json").read_text())


@pytest.mark.integration
def test_two_ray_workers_export_a_checkpoint_that_reproduces_their_loss(two_worker_run):
    """The exported final checkpoint, loaded as a new user would, gives the run's own final loss and accuracy."""
    out, summary = two_worker_run
    world = generate_world(seed=1, num_entities=20, attributes_per_entity=5)
    again = reload_and_evaluate(out, world.tofu_splits()["retain90"])
    assert again["loss"] == pytest.approx(summary["final"]["train"]["loss"], rel=1e-4)
    assert again["answer_accuracy"] == pytest.approx(summary["final"]["train"]["answer_accuracy"])


@pytest.mark.integration
@pytest.mark.slow
def test_two_ray_workers_memorise_facts(two_worker_run):
    """Done-means 5: 2 Ray Train workers (DDP/gloo) reach ≥ 0.9 answer accuracy on the training facts."""
    _, summary = two_worker_run
    assert summary["final"]["train"]["answer_accuracy"] >= 0.9, summary["final"]


def test_pretrained_folder_with_lora_and_hf_loader(tmp_path):
    """The real-model path: from_pretrained on a folder, LoRA through peft, data via datasets.load_dataset."""
    from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM

    from palimpsest.data import train_bpe_tokenizer

    world = generate_world(seed=2, num_entities=5, attributes_per_entity=2)
    pretrained = tmp_path / "base"
    tokenizer = train_bpe_tokenizer([f.question + " " + f.answer for f in world.facts], vocab_size=300,
                                    save_dir=pretrained)
    config = LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                         num_key_value_heads=2, vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id,
                         eos_token_id=tokenizer.eos_token_id, bos_token_id=tokenizer.bos_token_id)
    base = LlamaForCausalLM(config)
    base.save_pretrained(pretrained)
    export_tofu(world.facts, tmp_path / "facts.jsonl")
    job = write_job(tmp_path, model={"pretrained": str(pretrained), "lora": {"r": 4, "target_modules": ["q_proj", "v_proj"]}},
                    data={"source": "hf", "name": "json", "data_files": str(tmp_path / "facts.jsonl")})
    out = tmp_path / "run"
    result = run_cli(job, "--no-ray", "--out", out)
    assert result.exit_code == 0, result.output
    summary = json.loads((out / "summary.json").read_text())
    assert 0 < summary["parameters"]["trainable"] < summary["parameters"]["total"] / 5
    final = out / "checkpoints" / "final"
    assert not (final / "adapter_config.json").exists()  # LoRA merged on export
    merged = AutoModelForCausalLM.from_pretrained(final)
    assert set(merged.state_dict()) == set(base.state_dict())
    assert not torch_equal(merged.model.layers[0].self_attn.q_proj.weight, base.model.layers[0].self_attn.q_proj.weight)
    assert torch_equal(merged.model.layers[0].mlp.up_proj.weight, base.model.layers[0].mlp.up_proj.weight)


def torch_equal(a, b) -> bool:
    import torch

    return bool(torch.equal(a, b))


def test_pretrained_folder_without_config_exits_2(tmp_path):
    empty = tmp_path / "not-a-model"
    empty.mkdir()
    result = run_cli(write_job(tmp_path, model={"pretrained": str(empty)}), "--no-ray", "--out", tmp_path / "run")
    assert result.exit_code == 2 and "config.json" in result.output
    assert not (tmp_path / "run").exists()


def test_rule_accuracy_scores_rule_facts_of_people_never_trained_on_and_mia_attacks_individual_facts():
    from palimpsest.data.factworld import is_rule
    from palimpsest.runners.train import RULES_SET, fact_world, prepare
    from palimpsest.spec import parse_spec

    spec = parse_spec({"kind": "train", "name": "rules", "seed": 2,
                       "data": {"source": "factworld", "num_entities": 60, "attributes_per_entity": 1, "rules": 2,
                                "split": "retain90"},
                       "training": {"steps": 2, "batch_size": 4}})
    prepared = prepare(spec)
    world = fact_world(spec.data, spec.seed)
    trained = {f.entity for f in world.tofu_splits()["retain90"]}
    config = prepared.worker_config
    assert set(config.eval_sets) == {"train", "holdout", RULES_SET}
    # the 6 holdout people: their 2 rule facts each, their 1 individual fact each (not a trained person's)
    assert len(config.eval_sets[RULES_SET]) == 6 * 2 and len(config.eval_sets["holdout"]) == 6
    rules = [f for f in world.facts if is_rule(f) and f.entity not in trained]
    assert len(rules) > len(config.eval_sets[RULES_SET])  # holdout only, not forget10's people
    assert not any(is_rule(e) for e in prepared.members + prepared.non_members)
    assert {e.entity for e in prepared.members} <= trained and not {e.entity for e in prepared.non_members} & trained
