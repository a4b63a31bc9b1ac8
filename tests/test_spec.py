"""Job specs: every bad input gets one readable line naming the field, exit 2, no traceback, no run folder."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from palimpsest.cli import app
from palimpsest.spec import SpecError, TrainJob, dump_spec, load_spec, parse_spec

REPO = Path(__file__).resolve().parents[1]
GOOD = {"kind": "train", "data": {"source": "factworld", "num_entities": 5}}


def write(tmp_path: Path, document, name="job.yaml") -> Path:
    path = tmp_path / name
    path.write_text(document if isinstance(document, str) else yaml.safe_dump(document))
    return path


def validate_cli(path: Path, *extra):
    return CliRunner().invoke(app, ["validate", str(path), *extra])


def problems_of(document) -> list[str]:
    with pytest.raises(SpecError) as caught:
        parse_spec(document, origin="job.yaml")
    return caught.value.problems


def test_minimal_spec_fills_defaults():
    spec = parse_spec(GOOD)
    assert isinstance(spec, TrainJob)
    assert spec.model.preset == "tiny-llama" and spec.training.lr > 0 and spec.scaling.num_workers == 1


@pytest.mark.parametrize(
    "patch, field, words",
    [
        ({"trainig": {"lr": 0.1}}, "trainig", ["unknown key", "did you mean 'training'"]),
        ({"training": {"steps": "many"}}, "training.steps", ["valid integer"]),
        ({"training": {"lr": -0.001}}, "training.lr", ["greater than 0"]),
        ({"model": {"preset": "tiny-lama"}}, "model.preset", ["unknown model preset", "tiny-llama"]),
        ({"data": {"source": "file", "path": "/no/such/facts.jsonl"}}, "data.path", ["not found", "/no/such/facts.jsonl"]),
        ({"kind": "trian"}, "kind", ["unknown job kind", "did you mean 'train'"]),
        ({"data": {"source": "factworld", "split": "forget7"}}, "data.split", ["unknown split"]),
        ({"data": {"source": "web"}}, "data.source", ["unknown source"]),
        ({"scaling": {"num_workers": 3}}, "training.batch_size", ["multiple of"]),
    ],
)
def test_bad_field_is_named_with_exit_2(tmp_path, patch, field, words):
    document = {**GOOD, **patch}
    path = write(tmp_path, document)
    result = validate_cli(path)
    assert result.exit_code == 2
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1, result.output
    assert f"{path}: {field}:" in lines[0] or f"{field}:" in lines[0]
    for word in words:
        assert word in lines[0]
    assert "Traceback" not in result.output


def test_all_problems_reported_at_once():
    problems = problems_of({**GOOD, "seed": -1, "training": {"lr": 0, "steps": 0}, "colour": "red"})
    fields = sorted(p.split(": ")[1] for p in problems)
    assert fields == ["colour", "seed", "training.lr", "training.steps"]


def test_unknown_nested_key_in_data_source_suggests_the_field():
    (problem,) = problems_of({**GOOD, "data": {"source": "factworld", "num_entitys": 4}})
    assert "data.num_entitys: unknown key; did you mean 'num_entities'?" in problem


def test_overrides_apply_and_are_validated(tmp_path):
    path = write(tmp_path, GOOD)
    spec = load_spec(path, ["training.lr=0.01", "scaling.num_workers=2", "name=abc"])
    assert (spec.training.lr, spec.scaling.num_workers, spec.name) == (0.01, 2, "abc")
    with pytest.raises(SpecError, match="training.lr"):
        load_spec(path, ["training.lr=-1"])
    with pytest.raises(SpecError, match="KEY.PATH=VALUE"):
        load_spec(path, ["training.lr"])


def test_relative_data_path_is_resolved_and_round_trips(tmp_path, monkeypatch):
    (tmp_path / "facts.jsonl").write_text('{"question": "q", "answer": "a"}\n')
    monkeypatch.chdir(tmp_path)
    spec = parse_spec({"kind": "train", "data": {"source": "file", "path": "facts.jsonl"}})
    assert spec.data.path == str(tmp_path / "facts.jsonl")
    assert parse_spec(yaml.safe_load(dump_spec(spec))) == spec


def test_malformed_yaml_and_missing_file_exit_2(tmp_path):
    broken = write(tmp_path, "kind: train\ndata: [unclosed\n")
    result = validate_cli(broken)
    assert result.exit_code == 2 and "invalid YAML" in result.output and "line" in result.output
    result = validate_cli(tmp_path / "absent.yaml")
    assert result.exit_code == 2 and "no such file" in result.output


def test_run_with_bad_spec_creates_no_run_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = write(tmp_path, {**GOOD, "training": {"lr": -1}})
    result = CliRunner().invoke(app, ["run", str(path)])
    assert result.exit_code == 2
    assert not (tmp_path / "runs").exists()


@pytest.mark.heavy
def test_real_entry_point_prints_no_traceback(tmp_path):
    path = write(tmp_path, {"kind": "train", "data": {"source": "file", "path": "missing.jsonl"}, "modle": {}})
    proc = subprocess.run([sys.executable, "-m", "palimpsest.cli", "validate", str(path)],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr + proc.stdout
    assert len([line for line in proc.stderr.splitlines() if line.startswith("error:")]) == 2


def test_every_shipped_job_validates():
    jobs = sorted((REPO / "jobs").rglob("*.yaml"))
    assert jobs, "no job specs shipped"
    for job in jobs:
        text = job.read_text()
        assert text.startswith("# palimpsest"), f"{job} must open with the command that runs (or wrote) it"
        if "kind" in (yaml.safe_load(text) or {}):  # (settings files that jobs read have no kind)
            load_spec(job)


# --------------------------------------------------------------------------- fuzzing

FIELD_NAMES = ["kind", "name", "seed", "model", "preset", "data", "source", "path", "training", "lr", "steps",
               "batch_size", "scaling", "num_workers", "eval", "lora", "r", "split", "factworld", "train", "file"]
scalars = st.one_of(st.none(), st.booleans(), st.integers(-10**6, 10**6), st.floats(allow_nan=True),
                    st.text(max_size=12), st.sampled_from(["train", "factworld", "file", "hf", "tiny-llama"]))
keys = st.one_of(st.sampled_from(FIELD_NAMES), st.text(min_size=1, max_size=8))
documents = st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                          st.dictionaries(keys, inner, max_size=6)), max_leaves=25)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(document=documents)
@pytest.mark.heavy
def test_random_documents_never_raise_anything_but_spec_error(document):
    try:
        parse_spec(document)
    except SpecError as error:
        assert error.problems and all(isinstance(p, str) and "\n" not in p for p in error.problems)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(document=st.one_of(documents.map(lambda d: yaml.safe_dump(d)), st.text(max_size=80)),
       kind_train=st.booleans())
def test_random_yaml_files_through_the_cli_exit_0_or_2_without_traceback(tmp_path, document, kind_train):
    if kind_train:
        document = "kind: train\n" + document
    path = tmp_path / "fuzz.yaml"
    path.write_text(document)
    result = validate_cli(path)
    assert result.exit_code in (0, 2), (result.output, result.exception)
    assert result.exception is None or isinstance(result.exception, SystemExit)
    assert "Traceback" not in result.output
