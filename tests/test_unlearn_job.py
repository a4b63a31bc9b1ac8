"""`kind: unlearn` end to end: every method on 2 Ray Train workers, the ledger across a kill, bad input, TOFU files."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from palimpsest.cli import app
from palimpsest.runners import unlearn
from palimpsest.run_folder import RunFolder
from palimpsest.spec import parse_spec
from palimpsest.train.config import FailAt
from palimpsest.unlearn.ledger import Ledger

REPO = Path(__file__).resolve().parents[1]
EVERY_METHOD = [{"name": "retrain", "params": {"seed_offset": 0}}, "grad_ascent", "grad_diff", "npo", "simnpo",
                {"name": "rmu", "params": {"layer": 1, "steering_coeff": 4.0, "retain_weight": 50.0}},
                {"name": "gs_lora", "params": {"r": 4}}, "dp2u",
                {"name": "grad_ascent", "gu": True, "gu_samples": 4}, {"name": "npo", "gu": True, "gu_samples": 4},
                "idk_dpo", "undial"]  # a second forward of the DDP model in the loss; full logits and a frozen teacher


@pytest.fixture(scope="module")
def shared_cache(tmp_path_factory) -> Path:
    """One model cache for the module: jobs with the same target recipe reuse its target and retain models."""
    return tmp_path_factory.mktemp("unlearn-cache")


PRETRAINING = {"steps": 20, "batch_size": 8, "lr": 3e-3, "log_every": 20}  # the public facts, before the target
PRIVATE_TARGET = {"training": {"steps": 40, "batch_size": 16, "lr": 3e-3, "log_every": 20}, "privacy": {"epsilon": 8.0},
                  "pretraining": PRETRAINING}


def unlearn_spec(tmp_path: Path, **overrides) -> dict:
    spec = {"kind": "unlearn", "name": "ul", "seed": 2,
            "model": {"preset": "tiny-llama", "vocab_size": 400},
            "data": {"source": "factworld", "num_entities": 30, "attributes_per_entity": 2, "real_authors": 8,
                     "world_facts": 8},
            "target": {"training": {"steps": 40, "batch_size": 16, "lr": 3e-3, "log_every": 20},
                       "pretraining": PRETRAINING},
            "requests": [{"id": "r1", "percent": 5}, {"id": "r2", "percent": 5}],
            "training": {"steps": 4, "batch_size": 4, "lr": 1e-3, "lr_schedule": "constant", "log_every": 1},
            # generation for ROUGE-L up to 32 tokens, not TOFU's 200: every answer here is ≤ 23 with its eos, and a
            # model that babbles past it (after unlearning, most do) costs 200 steps per batch, per request and set
            "eval": {"max_examples": 16, "batch_size": 32, "max_new_tokens": 32},
            "methods": ["npo"],
            "cache": str(tmp_path / "cache")}
    for key, value in overrides.items():
        spec[key] = {**spec[key], **value} if isinstance(value, dict) and isinstance(spec.get(key), dict) else value
    return spec


def run_spec(document: dict, out: Path, *, use_ray: bool = True, fail_at: FailAt | None = None) -> dict:
    spec = parse_spec(document)
    prepared = unlearn.prepare(spec)
    folder = RunFolder.create(spec.name, out)
    summary = unlearn.run(spec, prepared, folder, use_ray=use_ray, fail_at=fail_at)
    folder.write_summary(summary)
    return summary


def metric_rows(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.integration
def test_every_method_serves_a_request_sequence_on_two_workers(tmp_path, ray_session, shared_cache):
    """Done-means 6 (every method, 2 workers) and 2 with 2 workers (GU's step stays orthogonal)."""
    document = unlearn_spec(tmp_path, methods=EVERY_METHOD, scaling={"num_workers": 2}, target=PRIVATE_TARGET,
                            cache=str(shared_cache))
    out = tmp_path / "run"
    summary = run_spec(document, out)
    labels = ["retrain", "grad_ascent", "grad_diff", "npo", "simnpo", "rmu", "gs_lora", "dp2u", "grad_ascent+gu",
              "npo+gu", "idk_dpo", "undial"]
    assert list(summary["methods"]) == labels
    for name, block in summary["methods"].items():
        assert 0 <= block["forget_quality"] <= 1 and block["model_utility"] >= 0, name
        assert set(block["mia"]) == {"loss", "zlib", "min_k", "min_k_plus_plus"}
        assert block["epsilon"] == (8.0 if name == "dp2u" else None)  # only dp2u's model is the DP base's
        assert [r["id"] for r in block["requests"]] == ["r1", "r2"]
        assert block["cost"]["ratio"] > 0 and block["cost"]["retrain_wall_s"] > 0
        for request in block["requests"]:
            assert (Path(request["checkpoint"]) / "config.json").is_file()
    # retrain trains exactly as the retain model did: it is the gold standard (KS p-value 1, privleak 0).
    assert summary["methods"]["retrain"]["forget_quality"] == 1.0 and summary["methods"]["retrain"]["privleak"] == 0
    assert summary["methods"]["retrain"]["cost"]["flops_ratio"] == 1.0
    assert summary["methods"]["dp2u"]["cost"]["flops_ratio"] == pytest.approx(0.5, abs=0.03)
    # DP2Unlearning's setup: a DP base (ε-DP on everything), the deployed target = the base fine-tuned without noise.
    assert summary["dp_base"]["privacy"]["epsilon"] <= 8.0 and summary["target"]["privacy"] is None
    assert "no DP guarantee" in summary["target"]["made"] and Path(summary["dp_base"]["path"]).is_dir()
    assert 0 <= summary["dp_base"]["forget_quality"] <= 1 and summary["dp_base"]["model_utility"] >= 0
    dp2u = summary["methods"]["dp2u"]["cost"]
    # The base (40 steps on everything) counted once over the 2 requests: about half a retraining more.
    assert dp2u["flops_ratio_with_base"] == pytest.approx(dp2u["flops_ratio"] + 0.5, abs=0.1)
    state = Ledger(out / "ledger.jsonl").state()
    assert {(m, r) for (m, r, _), record in state.items() if record["status"] == "done"} == \
        {(m, r) for m in labels for r in ("r1", "r2")}
    cosines = [row["value"] for row in metric_rows(out) if row["metric"] == "gu_max_abs_cos"]
    assert len(cosines) == 2 * 2 * 4 and max(cosines) < 1e-5  # 2 GU methods × 2 requests × 4 steps
    from palimpsest.report import write_report

    report = write_report(RunFolder(out)).read_text()
    assert "forget quality" in report and "### npo+gu: per request" in report
    for plot in ("forget_quality_vs_utility.png", "mia_and_cost.png", "requests.png"):
        assert (out / "plots" / plot).is_file()


@pytest.mark.integration
def test_the_gradient_methods_run_under_deepspeed_zero2_on_two_workers(tmp_path, ray_session, shared_cache):
    """Done-means: every gradient method runs under ZeRO-2 with N workers (gs_lora and GU are ddp-only, refused).

    The target and retain models are the previous test's, from the shared cache: one fit here.
    """
    document = unlearn_spec(tmp_path, scaling={"num_workers": 2}, target=PRIVATE_TARGET, cache=str(shared_cache),
                            methods=["grad_ascent", "grad_diff", "npo", "simnpo",
                                     {"name": "rmu", "params": {"layer": 1, "retain_weight": 10.0}}],
                            training={"backend": "deepspeed", "deepspeed": {"zero_stage": 2}})
    summary = run_spec(document, tmp_path / "run")
    assert list(summary["methods"]) == ["grad_ascent", "grad_diff", "npo", "simnpo", "rmu"]
    for name, block in summary["methods"].items():
        assert len(block["requests"]) == 2 and block["cost"]["unlearn_wall_s"] > 0, name
        # Each request changed the model (the optimizer stepped under ZeRO-2).
        first = Path(block["requests"][0]["checkpoint"])
        assert (first / "model.safetensors").read_bytes() != (Path(block["requests"][1]["checkpoint"]) /
                                                              "model.safetensors").read_bytes(), name


def _statuses(path: Path) -> dict:
    return {request: record["status"] for (_, request, _), record in Ledger(path).state().items()} \
        if path.exists() else {}


@pytest.mark.heavy
def test_the_ledger_survives_a_kill_during_request_two_and_the_next_run_finishes_the_sequence(tmp_path, unlearn_cache):
    """Done-means 5: killed in request 2 of 3 → 1 done, 2 pending; the next run serves 2 and 3; a rerun changes
    nothing; a reused id with other items is refused.

    The kill is SIGKILL to the CLI's process group at step 1 of request 2 (tests/crashing.py, at the loop's
    FailAt hook): no handler runs, and no race against a long request is needed."""
    ledger = tmp_path / "ledger.jsonl"
    document = unlearn_spec(tmp_path, ledger=str(ledger), cache=str(unlearn_cache),
                            requests=[{"id": "r1", "percent": 5}, {"id": "r2", "percent": 5}, {"id": "r3", "percent": 5}],
                            training={"steps": 4, "batch_size": 4, "lr": 1e-4, "lr_schedule": "constant",
                                      "log_every": 2})
    job = tmp_path / "job.yaml"
    job.write_text(yaml.safe_dump(document))
    marker = tmp_path / "killed"
    first = subprocess.run([sys.executable, str(Path(__file__).parent / "crashing.py"), "1", "1", str(marker),
                            "--", "run", str(job), "--no-ray", "--out", str(tmp_path / "first")],
                           cwd=tmp_path, capture_output=True, text=True, start_new_session=True, timeout=600)
    assert first.returncode == -signal.SIGKILL and marker.exists(), first.stdout + first.stderr
    assert _statuses(ledger) == {"r1": "done", "r2": "pending"}

    second = CliRunner().invoke(app, ["run", str(job), "--no-ray", "--out", str(tmp_path / "second")])
    assert second.exit_code == 0, second.output
    assert _statuses(ledger) == {"r1": "done", "r2": "done", "r3": "done"}
    served = {row["request"] for row in metric_rows(tmp_path / "second") if "request" in row}
    assert served == {"r2", "r3"}  # request 1 was not served again
    summary = json.loads((tmp_path / "second" / "summary.json").read_text())
    assert [r["id"] for r in summary["request_metrics"]] == ["r1", "r2", "r3"]
    # The second run served request 2 from the model request 1 left, which the ledger names.
    (r1,) = [r for (m, i, _), r in Ledger(ledger).state().items() if (m, i) == ("npo", "r1")]
    assert str(tmp_path / "first") in r1["checkpoint"]

    before = ledger.read_bytes()
    third = CliRunner().invoke(app, ["run", str(job), "--no-ray", "--out", str(tmp_path / "third")])
    assert third.exit_code == 0, third.output
    assert ledger.read_bytes() == before  # nothing served, nothing appended
    assert json.loads((tmp_path / "third" / "summary.json").read_text())["skipped"] == ["npo"]

    document["requests"][1] = {"id": "r2", "percent": 10}  # the same id, other items
    job.write_text(yaml.safe_dump(document))
    refused = subprocess.run([sys.executable, "-m", "palimpsest.cli", "run", str(job), "--no-ray", "--out",
                              str(tmp_path / "fourth")], cwd=tmp_path, capture_output=True, text=True)
    assert refused.returncode == 2 and "other items" in refused.stderr and "Traceback" not in refused.stderr
    assert not (tmp_path / "fourth").exists() and ledger.read_bytes() == before


@pytest.mark.heavy
def test_a_request_that_raises_is_failed_and_a_rerun_under_another_configuration_is_refused(tmp_path, capfd,
                                                                                             unlearn_cache):
    """Done-means 5 and 11 (#22): serving that raises → `failed` with the error; the rerun says what it skipped and
    serves the rest; the same ids under another unlearning lr are refused naming the field, unless serve_again."""
    ledger = tmp_path / "ledger.jsonl"
    document = unlearn_spec(tmp_path, ledger=str(ledger), eval={"max_examples": 4, "batch_size": 32},
                            cache=str(unlearn_cache),
                            training={"steps": 2, "batch_size": 4, "lr": 1e-3, "lr_schedule": "constant"})
    with pytest.raises(RuntimeError, match="injected failure"):
        run_spec(document, tmp_path / "first", use_ray=False,
                 fail_at=FailAt(task=1, step=1, marker=str(tmp_path / "marker")))
    (r1,), (r2,) = ([r for r in Ledger(ledger).state().values() if r["id"] == i] for i in ("r1", "r2"))
    assert (r1["status"], r2["status"]) == ("done", "failed") and "injected failure" in r2["error"]

    summary = run_spec(document, tmp_path / "second", use_ray=False)
    assert [(r["id"], r["status"]) for r in summary["request_metrics"]] == [("r1", "skipped"), ("r2", "served")]
    assert "r1 by npo: already served at " in capfd.readouterr().out
    # The retain models come from the first run's cache: no retraining was timed in this job, so no wall ratio;
    # the cached time is shown apart, with where and when it was measured. FLOPs compare anywhere.
    cost = summary["methods"]["npo"]["cost"]
    assert cost["ratio"] is None and cost["retrain_timed"] is None and cost["flops_ratio"] > 0
    assert [set(c) for c in cost["cached_retrain"]] == [{"wall_s", "measured_on", "measured_at"}] * 2
    assert _statuses(ledger) == {"r1": "done", "r2": "done"}

    before = ledger.read_bytes()
    document["training"]["lr"] = 2e-3
    job = tmp_path / "job.yaml"
    job.write_text(yaml.safe_dump(document))
    refused = CliRunner().invoke(app, ["run", str(job), "--no-ray", "--out", str(tmp_path / "third")])
    assert refused.exit_code == 2 and "another configuration" in refused.output, refused.output
    assert "unlearning.lr: 0.001 → 0.002" in refused.output and "Traceback" not in refused.output
    assert not (tmp_path / "third").exists() and ledger.read_bytes() == before

    summary = run_spec({**document, "ledger_mode": "serve_again"}, tmp_path / "fourth", use_ray=False)
    assert [r["status"] for r in summary["request_metrics"]] == ["served", "served"]
    hashes = {(r["id"], r["config_hash"]) for r in Ledger(ledger).state().values() if r["status"] == "done"}
    assert len(hashes) == 4  # both configurations' results, each under its own key


@pytest.mark.heavy
def test_idk_nll_serves_requests_with_i_dont_know_answers_the_tokenizer_knows(tmp_path, unlearn_cache):
    """The runner tokenises the refusals (a fitted tokenizer learns their words) and records the answer file."""
    idk = tmp_path / "idk.txt"
    idk.write_text("I don't know.\nNo idea at all.\n")
    document = unlearn_spec(tmp_path, methods=[{"name": "idk_nll", "params": {"idk_path": str(idk)}}],
                            eval={"max_examples": 4, "batch_size": 32}, cache=str(unlearn_cache))
    spec = parse_spec(document)
    prepared = unlearn.prepare(spec)
    assert [prepared.tokenizer.decode(a).strip() for a in prepared.idk] == ["I don't know.", "No idea at all."]
    summary = run_spec(document, tmp_path / "run", use_ray=False)
    assert [r["status"] for r in summary["request_metrics"]] == ["served", "served"]
    (record, *_) = Ledger(tmp_path / "run" / "ledger.jsonl").events()
    assert record["config"]["method"]["params"]["idk_path"] == str(idk)
    job = tmp_path / "job.yaml"
    job.write_text(yaml.safe_dump({**document, "methods": [{"name": "idk_nll",
                                                             "params": {"idk_path": str(tmp_path / "none.txt")}}]}))
    missing = CliRunner().invoke(app, ["validate", str(job)])
    assert missing.exit_code == 2 and "idk_path" in missing.output and "Traceback" not in missing.output, missing.output


BAD = [
    ({"methods": ["npx"]}, "methods[0].name: unknown unlearning method 'npx'; did you mean 'npo'?"),
    ({"methods": ["dp2u"]}, "methods[0]: dp2u serves requests from an ε-DP base; give target.privacy"),
    ({"methods": [{"name": "retrain", "gu": True}]}, "methods[0].gu: retrain has no forget objective to project"),
    ({"methods": [{"name": "rmu", "params": {"layer": 1}, "gu": True}]},
     "methods[0].gu: GU replaces a method's retain term by α × the mean answer-NLL gradient"),
    ({"methods": [{"name": "npo", "gu": True}], "training": {"backend": "deepspeed"}},
     "methods[0].gu: GU projects whole per-sample gradients"),
    ({"methods": [{"name": "npo", "params": {"beta": 0}}]}, "methods[0].params.beta: must be float > 0"),
    ({"methods": ["npo", "npo"]}, "each method (with or without gu, at each lr / steps) once (npo repeated)"),
    ({"requests": [{"id": "a", "percent": 5}, {"id": "a", "percent": 5}]}, "each request id once (a repeated)"),
    ({"requests": [{"id": "a", "percent": 5, "split": "forget01"}]}, "give exactly one of split, percent or path"),
    ({"requests": [{"id": "a", "split": "forget03"}]}, "requests[0] (a).split: fact-world requests name forget01"),
    ({"model": {"preset": "tiny-llama", "lora": {"r": 4}}}, "model.lora: unlearning serves requests on the whole"),
    ({"methods": ["rmu"]}, "methods[0].params.layer: 7 is not a decoder layer of this model, which has 2"),
    ({"target": {"training": {"backend": "deepspeed"}, "privacy": {"epsilon": 1.0}}}, "target.training.backend"),
    ({"target": {"privacy": {"epsilon": 1e-9}}}, "privacy"),
    ({"seeds": 0}, "seeds: Input should be greater than or equal to 1"),
    ({"seeds": 3, "ledger": "/tmp/kept.jsonl"}, "seeds: a ledger kept across runs (ledger) records the requests of one"),
    ({"methods": [{"name": "retrain", "params": {"seed_offset": -1}}]}, "methods[0].params.seed_offset: must be int"),
    ({"methods": [{"name": "retrain", "lr": 1e-3}]}, "methods[0].lr: retrain trains with target.training"),
    ({"methods": [{"name": "npo", "lr": 1e-3}, {"name": "npo", "lr": 0.001}]}, "(npo@lr0.001 repeated)"),
    ({"methods": [{"name": "npo", "stpes": 3}]}, "methods[0].stpes: unknown key; did you mean 'steps'?"),
]


@pytest.mark.parametrize("change, message", BAD, ids=[m[:40] for _, m in BAD])
def test_bad_input_is_one_clear_line_and_exit_2_before_any_folder(change, message, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    job = tmp_path / "job.yaml"
    document = {**unlearn_spec(tmp_path), **change}
    job.write_text(yaml.safe_dump(document))
    for args in (["validate", str(job)], ["run", str(job), "--no-ray", "--out", str(tmp_path / "run")]):
        result = CliRunner().invoke(app, args)
        assert result.exit_code == 2, (args, result.output)
        assert message in " ".join(result.output.split()), result.output
        assert "Traceback" not in result.output
    assert not (tmp_path / "run").exists()


@pytest.mark.heavy
def test_seeds_repeat_target_retain_model_and_methods_and_report_mean_and_bootstrap_interval(tmp_path):
    """Done-means 8: each seed is a run of its own (another target, retain model and retraining); the summary
    gives the mean over seeds and scipy's 95% BCa interval; retrain (another seed) is not the retain model."""
    import numpy as np
    import torch
    from scipy.stats import bootstrap
    from transformers import AutoModelForCausalLM

    document = unlearn_spec(tmp_path, seeds=3, requests=[{"id": "r1", "percent": 10}], methods=["retrain", "npo"],
                            target={"training": {"steps": 20}, "pretraining": PRETRAINING},
                            eval={"max_examples": 12, "max_new_tokens": 12})
    out = tmp_path / "run"
    summary = run_spec(document, out, use_ray=False)
    assert summary["seeds"] == [2, 3, 4]
    # Done-means 1: the fact world's public facts, learnt in a pre-training stage, give TOFU's 9-number utility.
    assert summary["utility"].startswith("TOFU's: hmean of 9 numbers")
    assert len(summary["methods"]["npo"]["requests"][0]["utility_parts"]) == 9
    assert summary["pretrained_base"]["examples"] == 16 and len(summary["pretrained_base"]["path"]) == 3  # per seed
    seeds = [json.loads((out / "seeds" / f"seed-{s}" / "summary.json").read_text()) for s in (2, 3, 4)]
    assert [s["seed"] for s in seeds] == [2, 3, 4] and all(s["status"] == "ok" for s in seeds)
    for seed in seeds:  # the target and the retain model are fine-tuned from that seed's pre-trained base
        assert seed["target"]["started_from"] == seed["retain_models"][0]["started_from"] == \
            seed["pretrained_base"]["path"]
    assert len({s["requests"][0]["items_hash"] for s in seeds}) == 1  # every seed forgets the same people
    assert len({s["retain_models"][0]["path"] for s in seeds}) == 3  # a retain model per seed
    assert len({s["target"]["forget_truth_ratio"] for s in seeds}) == 3  # and a target per seed
    for name in ("retrain", "npo"):
        block = summary["methods"][name]
        for key in ("forget_quality", "model_utility", "privleak"):
            values = [s["methods"][name][key] for s in seeds]
            assert block["per_seed"][key] == values
            assert block[key] == pytest.approx(float(np.mean(values)))
            if max(values) > min(values):
                expected = bootstrap((np.array(values),), np.mean, confidence_level=0.95, n_resamples=9999,
                                     method="BCa", rng=np.random.default_rng(0)).confidence_interval
                if not np.isnan(expected.low):
                    assert block["intervals"][key] == pytest.approx([expected.low, expected.high])
                low, high = block["intervals"][key]
                assert min(values) <= low <= block[key] <= high <= max(values)
    assert summary["methods"]["npo"]["intervals"]["mia.min_k"] is not None
    # retrain (seed_offset 1): another init and batch order than the retain model of its seed: not its copy.
    for seed in seeds:
        retrained = AutoModelForCausalLM.from_pretrained(seed["methods"]["retrain"]["requests"][0]["checkpoint"])
        gold = AutoModelForCausalLM.from_pretrained(seed["retain_models"][0]["path"])
        assert any(not torch.equal(a, b) for a, b in zip(retrained.state_dict().values(), gold.state_dict().values()))
    from palimpsest.report import write_report

    report = write_report(RunFolder(out)).read_text()
    assert "mean over 3 seeds" in report and "noise floor" in report
    mean, (low, high) = summary["methods"]["npo"]["model_utility"], summary["methods"]["npo"]["intervals"]["model_utility"]
    assert f"{mean:.4f} [{low:.4f}, {high:.4f}]" in report
    assert {r["seed"] for r in metric_rows(out)} == {2, 3, 4}


def test_a_request_of_items_never_trained_on_is_refused(tmp_path):
    from palimpsest.data import QAExample, export_tofu

    stranger = tmp_path / "stranger.json"
    export_tofu([QAExample("Where was Nobody born?", "Nobody was born nowhere.", "x", ("y",))], stranger)
    job = tmp_path / "job.yaml"
    job.write_text(yaml.safe_dump(unlearn_spec(tmp_path, requests=[{"id": "x", "path": str(stranger)}])))
    result = CliRunner().invoke(app, ["validate", str(job)])
    assert result.exit_code == 2 and "were never trained on" in result.output


@pytest.mark.heavy
def test_tofu_format_files_are_read_as_the_real_tofu_is(tmp_path):
    """The shipped sample (written by `palimpsest export-tofu`) through the TOFU loader, without Ray."""
    result = CliRunner().invoke(app, ["export-tofu", str(tmp_path / "tofu"), "--entities", "24", "--real-authors", "0",
                                      "--world-facts", "0"])
    assert result.exit_code == 0, result.output
    names = sorted(p.name for p in (tmp_path / "tofu").iterdir())
    assert "forget05_perturbed.json" in names and "retain_perturbed.json" in names and "full.json" in names
    first = json.loads((tmp_path / "tofu" / "forget05.json").read_text().splitlines()[0])
    assert set(first) == {"question", "answer"}  # as TOFU: the plain split has no perturbed answers
    document = unlearn_spec(tmp_path, requests=[{"id": "f5", "split": "forget05"}], methods=["grad_diff"])
    document["data"] = {"source": "tofu", "path": str(tmp_path / "tofu"), "holdout": "holdout10"}
    spec = parse_spec(document)
    prepared = unlearn.prepare(spec)
    point = prepared.points[0]
    assert point.sets["forget"] and all(e.perturbed_answers for e in point.sets["forget"])  # from *_perturbed
    assert len(prepared.train) == len((tmp_path / "tofu" / "full.json").read_text().splitlines())
    summary = run_spec(document, tmp_path / "run", use_ray=False)
    assert summary["status"] == "ok" and summary["methods"]["grad_diff"]["requests"][0]["id"] == "f5"
    assert "not TOFU's 9-number model utility" in summary["utility"]  # no real-authors / world-facts files
    assert set(summary["methods"]["grad_diff"]["requests"][0]["utility_parts"]) == \
        {"retain_Q_A_Prob", "retain_Q_A_ROUGE", "retain_Truth_Ratio"}

    # With TOFU's real_authors_perturbed and world_facts_perturbed (as the real release has them, and export-tofu
    # writes them): 9 numbers; a preset model learns them in the pre-training stage first (a real LLM knows them).
    result = CliRunner().invoke(app, ["export-tofu", str(tmp_path / "tofu"), "--entities", "24", "--real-authors", "6",
                                      "--world-facts", "5"])
    assert result.exit_code == 0, result.output
    written = {name: [json.loads(line) for line in (tmp_path / "tofu" / f"{name}.json").read_text().splitlines()]
               for name in ("real_authors", "real_authors_perturbed", "world_facts", "world_facts_perturbed")}
    assert [len(items) for items in written.values()] == [6, 6, 5, 5]
    assert all(len(item["perturbed_answer"]) == 3 for item in written["world_facts_perturbed"])
    full = (tmp_path / "tofu" / "full.json").read_text()
    assert all(item["question"] not in full for item in written["real_authors"])  # never in the fine-tuning data
    summary = run_spec({**document, "ledger": str(tmp_path / "second.jsonl")}, tmp_path / "nine", use_ray=False)
    assert summary["pretrained_base"]["examples"] == 11
    parts = summary["methods"]["grad_diff"]["requests"][0]["utility_parts"]
    assert set(parts) == {"retain_Q_A_Prob", "retain_Q_A_ROUGE", "retain_Truth_Ratio", "ra_Q_A_Prob_normalised",
                          "ra_Q_A_ROUGE", "ra_Truth_Ratio", "wf_Q_A_Prob_normalised", "wf_Q_A_ROUGE", "wf_Truth_Ratio"}
    assert summary["utility"].startswith("TOFU's: hmean of 9 numbers")
    assert set(summary["eval_sets"]) == {"forget", "retain", "holdout", "real_authors", "world_facts"}


@pytest.mark.slow
def test_npo_and_grad_diff_forget_better_than_the_target_and_keep_its_utility(tmp_path):
    """Done-means 4, on the fact world's forget10 (the shipped job's settings on a 100-person world, no Ray).

    dp2u's cost is checked where it is deterministic (its FLOPs, in the two-worker test above)
    and measured in wall time side by side by `jobs/bench/unlearn_cost.yaml`: never timed here.
    """
    document = yaml.safe_load((REPO / "jobs" / "unlearn" / "factworld_forget10.yaml").read_text())
    document.update(methods=[{"name": "retrain", "params": {"seed_offset": 0}}, "grad_diff", "npo"],
                    cache=str(tmp_path / "cache"),
                    scaling={"num_workers": 1})
    document["data"]["num_entities"] = 100
    document["target"]["training"]["steps"] = 300
    document["target"]["pretraining"]["steps"] = 400
    summary = run_spec(document, tmp_path / "open", use_ray=False)
    target, methods = summary["target"], summary["methods"]
    for name in ("npo", "grad_diff"):
        # 18 forgotten items move forget quality in coarse KS steps: the forgotten answers' ROUGE says more.
        assert methods[name]["forget_quality"] >= target["forget_quality"], (name, methods[name], target)
        assert methods[name]["forget_rouge"] <= target["forget_rouge"] - 0.3, (name, methods[name], target)
        assert methods[name]["model_utility"] >= 0.8 * target["model_utility"], (name, methods[name], target)
    retrain = methods["retrain"]
    assert retrain["forget_quality"] == 1.0 and retrain["privleak"] == 0.0  # the retain model, reproduced
    assert retrain["model_utility"] == summary["retain_models"][0]["model_utility"]

    print(json.dumps({"open": summary["table"], "target": {k: target[k] for k in ("forget_quality", "model_utility")}},
                     indent=1))
