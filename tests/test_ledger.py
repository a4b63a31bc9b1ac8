"""The forget-request ledger: append-only, crash-safe, never applies a request twice, under another forget set or
under another configuration."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from palimpsest.cli import app
from palimpsest.data import QAExample
from palimpsest.unlearn.ledger import Ledger, LedgerError, config_differences, config_hash, content_hash

FORGET = [QAExample("Where was A born?", "A was born in X."), QAExample("What does A do?", "A is a baker.")]
OTHER = [QAExample("Where was B born?", "B was born in Y.")]
CONFIG = {"method": {"name": "npo", "params": {"beta": 0.1}}, "epsilon": None, "target": {"seed": 0}}
BETA = {**CONFIG, "method": {"name": "npo", "params": {"beta": 0.2}}}
H = config_hash(CONFIG)


def _begin(ledger, request_id="r1", items=FORGET, method="npo", config=CONFIG, epsilon=None):
    return ledger.begin(request_id, content_hash(items), method=method, config=config, epsilon=epsilon,
                        items=len(items))


def test_the_content_hash_is_of_the_set_of_items_and_the_config_hash_of_its_content():
    assert content_hash(FORGET) == content_hash(list(reversed(FORGET)))  # order does not matter
    assert content_hash(FORGET) == content_hash([{"question": e.question, "answer": e.answer} for e in FORGET])
    assert content_hash(FORGET) != content_hash(FORGET[:1]) != content_hash(OTHER)
    edited = [FORGET[0], QAExample(FORGET[1].question, "A is a painter.")]
    assert content_hash(edited) != content_hash(FORGET)  # content, not just questions
    assert config_hash(dict(reversed(list(CONFIG.items())))) == H != config_hash(BETA)
    assert config_differences(CONFIG, BETA) == ["method.params.beta: 0.1 → 0.2"]


def test_a_request_goes_pending_then_done_and_is_skipped_when_asked_again(tmp_path):
    ledger, digest = Ledger(tmp_path / "ledger.jsonl"), content_hash(FORGET)
    assert ledger.decide("forget01", digest, "npo", CONFIG).action == "serve"
    _begin(ledger, "forget01")
    assert ledger.latest("npo", "forget01", H)["status"] == "pending"
    ledger.finish("forget01", "npo", H, metrics={"forget_quality": 0.4}, checkpoint="checkpoints/request-1")
    decision = Ledger(tmp_path / "ledger.jsonl").decide("forget01", digest, "npo", CONFIG)  # a new process reads it
    assert decision.action == "skip" and decision.record["metrics"] == {"forget_quality": 0.4}
    lines = (tmp_path / "ledger.jsonl").read_text().splitlines()
    assert [json.loads(line)["status"] for line in lines] == ["pending", "done"]  # appended, never rewritten
    assert json.loads(lines[1])["config_hash"] == H and json.loads(lines[0])["config"] == CONFIG


def test_the_same_id_under_another_configuration_is_refused_naming_the_fields_or_served_again(tmp_path):
    path = tmp_path / "ledger.jsonl"
    ledger, digest = Ledger(path), content_hash(FORGET)
    _begin(ledger)
    ledger.finish("r1", "npo", H, metrics={"forget_quality": 0.4}, checkpoint=None)
    before = path.read_bytes()
    for other in (BETA, {**CONFIG, "epsilon": 8.0}, {**CONFIG, "target": {"seed": 1}}):
        with pytest.raises(LedgerError, match="another configuration") as error:
            ledger.decide("r1", digest, "npo", other)
        assert " → " in str(error.value) and "serve_again" in str(error.value)
    with pytest.raises(LedgerError, match=r"method\.params\.beta: 0\.1 → 0\.2"):
        ledger.decide("r1", digest, "npo", BETA)
    assert path.read_bytes() == before  # a refusal writes nothing
    # Another method is another copy of the target: its own key, nothing to refuse.
    assert ledger.decide("r1", digest, "grad_diff", {**CONFIG, "method": {"name": "grad_diff"}}).action == "serve"
    # serve_again: a new entry beside the old one; the old result stays under its own configuration.
    assert ledger.decide("r1", digest, "npo", BETA, mode="serve_again").action == "serve"
    _begin(ledger, config=BETA)
    ledger.finish("r1", "npo", config_hash(BETA), metrics={"forget_quality": 0.9}, checkpoint=None)
    assert ledger.latest("npo", "r1", H)["metrics"] == {"forget_quality": 0.4}
    assert ledger.latest("npo", "r1", config_hash(BETA))["metrics"] == {"forget_quality": 0.9}
    assert ledger.decide("r1", digest, "npo", BETA).action == "skip"  # and asked again it is done
    with pytest.raises(LedgerError, match="ledger_mode"):
        ledger.decide("r1", digest, "npo", CONFIG, mode="again")


def test_a_crash_leaves_the_request_pending_and_the_next_append_cuts_the_torn_line(tmp_path):
    path, digest = tmp_path / "ledger.jsonl", content_hash(FORGET)
    _begin(Ledger(path), "r2", method="grad_diff", epsilon=8.0)
    with open(path, "a") as handle:  # the crash hit in the middle of writing the next line
        handle.write('{"id": "r2", "status": "do')
    resumed = Ledger(path)
    assert resumed.latest("grad_diff", "r2", H)["status"] == "pending"
    assert resumed.decide("r2", digest, "grad_diff", CONFIG).action == "serve"
    assert resumed.decide("r2", digest, "npo", CONFIG).action == "serve"  # another method's copy of the target
    with pytest.raises(LedgerError, match="not pending"):
        resumed.finish("r3", "grad_diff", H, metrics={}, checkpoint=None)
    # The next append starts on a line of its own: the torn one is cut off, and every later read works.
    resumed.finish("r2", "grad_diff", H, metrics={"forget_quality": 0.5}, checkpoint=None)
    _begin(resumed, "r3", method="grad_diff")
    lines = path.read_text().split("\n")
    assert lines[-1] == "" and [json.loads(line)["status"] for line in lines[:-1]] == ["pending", "done", "pending"]
    assert Ledger(path).latest("grad_diff", "r2", H)["metrics"] == {"forget_quality": 0.5}


def test_a_whole_last_record_without_its_newline_is_kept(tmp_path):
    path = tmp_path / "ledger.jsonl"
    _begin(Ledger(path))
    path.write_bytes(path.read_bytes().rstrip(b"\n"))  # the crash hit between the record and its newline
    ledger = Ledger(path)
    assert ledger.latest("npo", "r1", H)["status"] == "pending"
    ledger.finish("r1", "npo", H, metrics={}, checkpoint=None)
    assert [e["status"] for e in Ledger(path).events()] == ["pending", "done"]


def test_a_reused_id_with_other_items_is_refused_and_a_failed_request_is_served_again(tmp_path):
    ledger = Ledger(tmp_path / "ledger.jsonl")
    _begin(ledger)
    ledger.fail("r1", "npo", H, "RuntimeError: out of memory")
    assert ledger.latest("npo", "r1", H)["error"] == "RuntimeError: out of memory"
    assert ledger.decide("r1", content_hash(FORGET), "npo", CONFIG).action == "serve"
    with pytest.raises(LedgerError, match="other items"):
        ledger.decide("r1", content_hash(OTHER), "npo", CONFIG)
    with pytest.raises(LedgerError, match="other items"):  # an id means the same items for every method
        ledger.decide("r1", content_hash(OTHER), "grad_diff", CONFIG)


def test_an_edited_line_in_the_middle_is_an_error_not_silently_skipped(tmp_path):
    path = tmp_path / "ledger.jsonl"
    ledger = Ledger(path)
    _begin(ledger)
    ledger.finish("r1", "npo", H, metrics={}, checkpoint=None)
    lines = path.read_text().splitlines()
    path.write_text(lines[0] + "\nnot json\n" + lines[1] + "\n")
    with pytest.raises(LedgerError, match="line 2"):
        ledger.state()


def test_palimpsest_ledger_prints_the_latest_state_of_each_request(tmp_path):
    path = tmp_path / "ledger.jsonl"
    ledger = Ledger(path)
    _begin(ledger, "forget01")
    ledger.finish("forget01", "npo", H, metrics={}, checkpoint="runs/x/checkpoints/request-1")
    _begin(ledger, "forget05", items=OTHER)
    result = CliRunner().invoke(app, ["ledger", str(path)])
    assert result.exit_code == 0, result.output
    assert "forget01" in result.output and "done" in result.output and "pending" in result.output
    assert H[7:19] in result.output
    missing = CliRunner().invoke(app, ["ledger", str(tmp_path / "nope.jsonl")])
    assert missing.exit_code == 2 and "no ledger" in missing.output
