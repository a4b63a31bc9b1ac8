"""The forget-request ledger: append-only, crash-safe, never applies a request twice or under another forget set."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from palimpsest.cli import app
from palimpsest.data import QAExample
from palimpsest.unlearn.ledger import Ledger, LedgerError, content_hash

FORGET = [QAExample("Where was A born?", "A was born in X."), QAExample("What does A do?", "A is a baker.")]
OTHER = [QAExample("Where was B born?", "B was born in Y.")]


def test_the_content_hash_is_of_the_set_of_items():
    assert content_hash(FORGET) == content_hash(list(reversed(FORGET)))  # order does not matter
    assert content_hash(FORGET) == content_hash([{"question": e.question, "answer": e.answer} for e in FORGET])
    assert content_hash(FORGET) != content_hash(FORGET[:1]) != content_hash(OTHER)
    edited = [FORGET[0], QAExample(FORGET[1].question, "A is a painter.")]
    assert content_hash(edited) != content_hash(FORGET)  # content, not just questions


def test_a_request_goes_pending_then_done_and_is_skipped_when_asked_again(tmp_path):
    ledger, digest = Ledger(tmp_path / "ledger.jsonl"), content_hash(FORGET)
    assert ledger.decide("forget01", digest, "npo").action == "serve"
    ledger.begin("forget01", digest, method="npo", epsilon=None, items=2)
    assert ledger.state()[("npo", "forget01")]["status"] == "pending"
    ledger.finish("forget01", "npo", metrics={"forget_quality": 0.4}, checkpoint="checkpoints/request-1")
    decision = Ledger(tmp_path / "ledger.jsonl").decide("forget01", digest, "npo")  # a new process reads it back
    assert decision.action == "skip" and decision.record["metrics"] == {"forget_quality": 0.4}
    lines = (tmp_path / "ledger.jsonl").read_text().splitlines()
    assert [json.loads(line)["status"] for line in lines] == ["pending", "done"]  # appended, never rewritten


def test_a_crash_leaves_the_request_pending_and_the_next_run_serves_it(tmp_path):
    path, digest = tmp_path / "ledger.jsonl", content_hash(FORGET)
    Ledger(path).begin("r2", digest, method="grad_diff", epsilon=8.0, items=2)
    with open(path, "a") as handle:  # the crash hit in the middle of writing the next line
        handle.write('{"id": "r2", "status": "do')
    resumed = Ledger(path)
    assert resumed.state()[("grad_diff", "r2")]["status"] == "pending"
    assert resumed.decide("r2", digest, "grad_diff").action == "serve"
    assert resumed.decide("r2", digest, "npo").action == "serve"  # another method's copy of the target
    with pytest.raises(LedgerError, match="not pending"):
        resumed.finish("r3", "grad_diff", metrics={}, checkpoint=None)


def test_a_reused_id_with_other_items_is_refused_and_a_failed_request_is_served_again(tmp_path):
    ledger = Ledger(tmp_path / "ledger.jsonl")
    ledger.begin("r1", content_hash(FORGET), method="npo", epsilon=None, items=2)
    ledger.fail("r1", "npo", "RuntimeError: out of memory")
    assert ledger.decide("r1", content_hash(FORGET), "npo").action == "serve"
    with pytest.raises(LedgerError, match="other items"):
        ledger.decide("r1", content_hash(OTHER), "npo")
    with pytest.raises(LedgerError, match="other items"):  # an id means the same items for every method
        ledger.decide("r1", content_hash(OTHER), "grad_diff")


def test_an_edited_line_in_the_middle_is_an_error_not_silently_skipped(tmp_path):
    path = tmp_path / "ledger.jsonl"
    ledger = Ledger(path)
    ledger.begin("r1", content_hash(FORGET), method="npo", epsilon=None, items=2)
    ledger.finish("r1", "npo", metrics={}, checkpoint=None)
    lines = path.read_text().splitlines()
    path.write_text(lines[0] + "\nnot json\n" + lines[1] + "\n")
    with pytest.raises(LedgerError, match="line 2"):
        ledger.state()


def test_palimpsest_ledger_prints_the_latest_state_of_each_request(tmp_path):
    path = tmp_path / "ledger.jsonl"
    ledger = Ledger(path)
    ledger.begin("forget01", content_hash(FORGET), method="npo", epsilon=None, items=2)
    ledger.finish("forget01", "npo", metrics={}, checkpoint="runs/x/checkpoints/request-1")
    ledger.begin("forget05", content_hash(OTHER), method="npo", epsilon=None, items=1)
    result = CliRunner().invoke(app, ["ledger", str(path)])
    assert result.exit_code == 0, result.output
    assert "forget01" in result.output and "done" in result.output and "pending" in result.output
    missing = CliRunner().invoke(app, ["ledger", str(tmp_path / "nope.jsonl")])
    assert missing.exit_code == 2 and "no ledger" in missing.output
