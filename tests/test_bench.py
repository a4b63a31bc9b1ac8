"""Benchmarks (`kind: bench`, `palimpsest bench`, scripts/gpu_check.py): what they measure and how they report it.

Never a speed assertion: these tests check that each figure is measured on the steps it
says, compared with the baseline it names, and that a target is judged on the right side
of its bound. The figures themselves are `make bench`'s (docs/benchmarks.md).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from palimpsest.bench import Row, compare
from palimpsest.cli import app
from palimpsest.spec import SpecError, parse_spec

REPO = Path(__file__).resolve().parents[1]
runner = CliRunner()


# ----------------------------------------------------------------------------- rows and targets


@pytest.mark.parametrize("value, target, meets", [
    (95.0, ">= 0.95", True), (94.9, ">= 0.95", False), (120.0, "<= 1.2", True), (120.1, "<= 1.2", False),
    (100.0, ">= 1.0", True),
])
def test_a_target_is_met_on_its_bound_and_missed_just_past_it(value, target, meets):
    rows = [Row("s", "base", 100.0, "x"), Row("s", "ours", value, "x")]
    row = compare(rows, "ours", "base", target=target)
    assert row.ratio == pytest.approx(value / 100.0) and row.baseline == "base" and row.meets is meets


def test_a_ratio_without_a_baseline_figure_is_left_open():
    rows = [Row("s", "base", None, "x"), Row("s", "ours", 3.0, "x")]
    row = compare(rows, "ours", "base", target=">= 1.0")
    assert row.ratio is None and row.meets is None


# ----------------------------------------------------------------------------- the loop's steady clock


def _tiny_train(steps: int) -> dict:
    return {"kind": "train", "name": "steady", "seed": 0, "model": {"preset": "tiny-llama"},
            "data": {"source": "factworld", "num_entities": 12, "attributes_per_entity": 2, "split": "all"},
            "training": {"steps": steps, "batch_size": 8, "log_every": 2},
            "eval": {"max_examples": 8, "holdout": False}}


def test_steady_throughput_counts_the_steps_after_the_warm_up_and_leaves_evaluation_out(tmp_path):
    """Steps 3..N-1 of each task: their tokens are the run's minus those of the first 3 (a batch is a
    function of the step, so a 3-step run trains exactly those)."""
    from palimpsest.runners import train
    from palimpsest.train.loop import STEADY_SKIP, run_without_ray

    assert STEADY_SKIP == 3
    results = {}
    for steps in (3, 10):
        document = _tiny_train(steps)
        if steps == 10:
            document["eval"]["eval_every"] = 4  # periodic evaluation inside the timed window
        prepared = train.prepare(parse_spec(document))
        (results[steps],) = run_without_ray(prepared.worker_config, tmp_path / str(steps))["methods"]
    long, short = results[10], results[3]
    assert long["steady_steps"] == 10 - STEADY_SKIP
    assert long["steady_tokens"] == long["train_tokens"] - short["train_tokens"]
    assert long["eval_wall_s"] > 0 and 0 < long["steady_wall_s"] < long["wall_s"]
    assert short["steady_steps"] == 1  # a task shorter than the warm-up still times its last step


# ----------------------------------------------------------------------------- specs and the CLI


@pytest.mark.parametrize("benchmark, says", [
    ({"type": "warp"}, "benchmarks[0].type: unknown type warp"),
    ({"type": "deepspeed", "workers": 2, "batch_size": 31}, "multiple of workers"),
    ({"type": "unlearn", "job": "jobs/quickstart.yaml"}, "an unlearn job is needed"),
    ({"type": "unlearn", "job": "jobs/unlearn/nope.yaml"}, "job spec not found"),
    ({"type": "loop", "stepz": 4}, "stepz"),
])
def test_a_bad_benchmark_names_its_field(benchmark, says, monkeypatch):
    monkeypatch.chdir(REPO)
    with pytest.raises(SpecError) as error:
        parse_spec({"kind": "bench", "benchmarks": [benchmark]})
    assert says in "\n".join(error.value.problems), error.value.problems


def test_every_shipped_bench_spec_is_valid(monkeypatch):
    monkeypatch.chdir(REPO)
    types = set()
    for path in sorted((REPO / "jobs" / "bench").glob("*.yaml")):
        spec = parse_spec(yaml.safe_load(path.read_text()))
        types |= {b.type for b in spec.benchmarks}
    assert types == {"loop", "deepspeed", "private", "unlearn", "envs", "rllib", "ppo"}


def test_bench_refuses_a_job_of_another_kind_and_writes_nothing(tmp_path, monkeypatch):
    monkeypatch.chdir(REPO)
    out = tmp_path / "out"
    result = runner.invoke(app, ["bench", "jobs/quickstart.yaml", "--out", str(out)])
    assert result.exit_code == 2 and "palimpsest bench runs kind: bench specs only" in result.output
    assert not out.exists()
    result = runner.invoke(app, ["bench", str(tmp_path / "missing"), "--out", str(out)])
    assert result.exit_code == 2 and "no such file or folder" in result.output and not out.exists()


@pytest.mark.heavy
def test_bench_joins_specs_into_one_table_bench_json_and_a_plot(tmp_path, monkeypatch):
    """Two specs, one run folder: the loop against bare PyTorch and Trainer (no Ray), and the environments."""
    monkeypatch.chdir(REPO)
    specs = tmp_path / "specs"
    specs.mkdir()
    (specs / "a.yaml").write_text(yaml.safe_dump({"kind": "bench", "benchmarks": [
        {"type": "loop", "num_entities": 12, "steps": 6, "batch_size": 8, "repeats": 1, "ray": False}]}))
    (specs / "b.yaml").write_text(yaml.safe_dump({"kind": "bench", "benchmarks": [
        {"type": "envs", "batches": [8], "batch_steps": 3, "single_steps": 20, "repeats": 1, "popgym": False}]}))
    out = tmp_path / "run"
    result = runner.invoke(app, ["bench", str(specs), "--out", str(out), "--no-ray"], terminal_width=250)
    assert result.exit_code == 0, result.output
    bench = json.loads((out / "bench.json").read_text())
    cases = {(r["section"], r["case"]): r for r in bench["rows"]}
    ours = cases[("loop", "ours, no Ray")]
    assert ours["baseline"] == "bare PyTorch" and ours["target"] == ">= 0.95"
    assert ours["ratio"] == pytest.approx(ours["value"] / cases[("loop", "bare PyTorch")]["value"], rel=1e-3)
    against = cases[("loop", "ours, no Ray (against Trainer)")]
    assert against["baseline"] == "transformers Trainer" and against["target"] == ">= 1.0"
    assert cases[("loop", "ours, Ray Train 1 worker")]["value"] is None  # --no-ray: skipped, and said so
    assert any(section == "envs" for section, _ in cases)
    assert set(bench["section_wall_s"]) == {"loop", "envs"} and bench["machine"]["cores"] >= 1
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "ok" and summary["kind"] == "bench"
    assert (out / "plots" / "bench.png").is_file() and not (out / "work").exists()
    spec = yaml.safe_load((out / "spec.yaml").read_text())
    assert [b["type"] for b in spec["benchmarks"]] == ["loop", "envs"]  # the joined job reruns as it ran
    assert "| loop | ours, no Ray |" in (out / "report.md").read_text()
    assert "ours, no Ray" in result.output and "bare PyTorch" in result.output


# ----------------------------------------------------------------------------- the GPU script


@pytest.mark.heavy
def test_the_gpu_script_runs_every_section_in_dry_run_mode(tmp_path):
    """Done-means 5: `scripts/gpu_check.py --dry-run` (CPU, tiny sizes) runs each section the GPU run does."""
    done = subprocess.run([sys.executable, str(REPO / "scripts" / "gpu_check.py"), "--dry-run", "--out",
                           str(tmp_path)], capture_output=True, text=True, timeout=300, cwd=REPO)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    report = json.loads((tmp_path / "gpu_check.json").read_text())
    assert report["finished"] and report["sections"]["meta"]["figures"]["dry_run"] is True
    expected = {"meta", "parity", "throughput_plain", "throughput_compiled", "throughput_zero2", "throughput_zero3",
                "throughput_packed", "baseline_trainer", "dp_nonprivate", "dp_hooks", "dp_ghost",
                "dp_nonprivate_lora", "dp_lora_hooks", "dp_lora_ghost", "dp_summary"}
    assert set(report["sections"]) == expected
    failed = {name: entry.get("error") for name, entry in report["sections"].items() if not entry["ok"]}
    assert not failed, failed
    parity = report["sections"]["parity"]["figures"]
    assert parity["max_rel_diff"] <= parity["tolerance_rel"]
    throughput = report["sections"]["throughput_plain"]["figures"]
    assert throughput["tokens_per_s"] > 0 and 0 <= throughput["mfu"] < 1


def test_the_loss_over_kept_logits_equals_the_loss_over_every_position():
    """`logits_to_keep` from the shortest prompt's last token drops no labelled position (one later would)."""
    import torch

    from palimpsest.models import build_model
    from palimpsest.runners import train
    from palimpsest.train.batching import collate_qa, token_losses
    from palimpsest.train.hooks import TASK_PART, TrainingMethod
    from palimpsest.train.step import _logits_window

    config = train.prepare(parse_spec(_tiny_train(3))).worker_config
    ids, items = config.model, config.tasks[0][:8]
    model = build_model(ids).eval()
    inputs = collate_qa(items, pad_id=ids["pad_id"], eos_id=ids["eos_id"])
    chunk = [(TASK_PART, item) for item in items]
    window = _logits_window(TrainingMethod(), model, chunk, inputs["input_ids"].size(1))
    assert 0 < window["logits_to_keep"] < inputs["input_ids"].size(1)
    with torch.no_grad():
        full, full_mask = token_losses(model(input_ids=inputs["input_ids"]).logits, inputs["labels"])
        kept, kept_mask = token_losses(model(input_ids=inputs["input_ids"], **window).logits, inputs["labels"])
        late, late_mask = token_losses(model(input_ids=inputs["input_ids"],
                                             logits_to_keep=window["logits_to_keep"] - 1).logits, inputs["labels"])
    assert kept_mask.sum() == full_mask.sum() and torch.allclose(kept.sum(), full.sum(), rtol=1e-5)
    assert late_mask.sum() < full_mask.sum()  # one position fewer loses the shortest prompt's first answer token
