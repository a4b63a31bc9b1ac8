"""The "envs" bench section: its rows, ratios and targets on a tiny measurement (figures never asserted against a time)."""

from __future__ import annotations

import os
import sys
from types import SimpleNamespace

import gymnasium
import numpy as np
import pytest

import palimpsest_envs
from palimpsest.bench import Row
from palimpsest.bench import envs as bench_envs
from palimpsest.spec import parse_spec

TINY = {"type": "envs", "batches": [4, 64], "batch_steps": 5, "single_steps": 50, "repeats": 1}
NAMES = [bench_envs.env_name(env_id) for env_id in palimpsest_envs.ENV_IDS]


def tiny_spec(**overrides) -> SimpleNamespace:
    """The section's argument as the bench runner builds it: the job's name and seed, and one benchmark."""
    job = parse_spec({"kind": "bench", "benchmarks": [{**TINY, **overrides}]})
    return SimpleNamespace(name=job.name, seed=job.seed, benchmark=job.benchmarks[0])


def by_case(rows: list[Row]) -> dict[str, Row]:
    cases = [row.case for row in rows]
    assert len(cases) == len(set(cases)), cases
    return {row.case: row for row in rows}


def assert_ratios_consistent(rows: list[Row]) -> None:
    """Every ratio is its row's value over its baseline row's value (both in the section)."""
    cases = by_case(rows)
    for row in rows:
        assert row.section == "envs" and row.unit == "steps/s"
        if row.baseline is not None:
            assert row.baseline in cases, row
            # (the ratio is rounded to 4 decimals: a small one is off by up to 5e-5)
            assert row.ratio == pytest.approx(row.value / cases[row.baseline].value, rel=1e-3, abs=5e-5), row


@pytest.fixture(scope="module")
def measured() -> list[Row]:
    return bench_envs.measure(tiny_spec(), None, use_ray=False)


@pytest.mark.heavy
def test_every_env_has_its_single_and_batch_rows(measured):
    cases = by_case(measured)
    for name in NAMES:
        assert cases[f"{name} single"].value > 0
        for n in TINY["batches"]:
            row = cases[f"{name} batch {n}"]
            assert row.value > 0 and row.baseline == f"{name} single"
            assert row.target is None and row.meets is None  # no batch here is the absolute target's
        assert "one core" in cases[f"{name} single"].note or "not pinned" in cases[f"{name} single"].note
    assert_ratios_consistent(measured)


@pytest.mark.heavy
def test_without_popgym_compared_only_with_the_single_env():
    rows = bench_envs.measure(tiny_spec(popgym=False), None, use_ray=False)
    assert [row.case for row in rows] == [f"{name} {case}" for name in NAMES
                                          for case in ("single", *(f"batch {n}" for n in TINY["batches"]))]
    assert all(row.baseline is None for row in rows if row.case.endswith(" single"))
    assert_ratios_consistent(rows)


@pytest.mark.heavy
def test_popgym_missing_is_one_row_not_a_crash(monkeypatch):
    monkeypatch.setitem(sys.modules, "popgym", None)  # importlib.util.find_spec("popgym") -> None
    rows = bench_envs.measure(tiny_spec(), None, use_ray=False)
    missing = [row for row in rows if row.case.startswith("popgym")]
    assert [(row.case, row.value) for row in missing] == [("popgym", None)]
    assert missing[0].note == bench_envs.MISSING_POPGYM and "pip install -e .[bench]" in missing[0].note
    assert all(f"{name} single" in by_case(rows) for name in NAMES)


@pytest.mark.heavy
def test_popgym_rows_pair_each_env_stepped_the_same_way(measured):
    pytest.importorskip("popgym")
    cases = by_case(measured)
    assert "popgym" not in cases  # no "missing" row when it imports
    assert set(bench_envs.POPGYM_PAIRS) == set(NAMES)
    for name, (_, theirs) in bench_envs.POPGYM_PAIRS.items():
        single, sync = f"popgym {theirs} single", f"popgym {theirs} SyncVectorEnv {bench_envs.POPGYM_BATCH}"
        assert cases[single].value > 0 and cases[sync].value > 0
        assert cases[f"{name} single"].baseline == single
        versus = cases[f"{name} batch {bench_envs.POPGYM_BATCH} vs popgym"]
        assert versus.baseline == sync
        # 64 is among the tiny spec's batches: the comparison reuses that measurement.
        assert versus.value == cases[f"{name} batch {bench_envs.POPGYM_BATCH}"].value
        assert gymnasium.spec(bench_envs.popgym_id(theirs)) is not None
    assert_ratios_consistent(measured)


@pytest.mark.heavy
def test_popgym_batch_is_measured_when_not_among_the_batches():
    pytest.importorskip("popgym")
    rows = bench_envs.measure(tiny_spec(batches=[4]), None, use_ray=False)
    cases = by_case(rows)
    for name, (_, theirs) in bench_envs.POPGYM_PAIRS.items():
        assert f"{name} batch 64" not in cases
        assert cases[f"{name} batch 64 vs popgym"].value > 0
    assert_ratios_consistent(rows)


def test_absolute_target_counts_exactly_1e7_as_met():
    def meets(value):
        return bench_envs.absolute_target(Row("envs", "x", value, "steps/s", ratio=123.0)).meets

    assert meets(9_999_999.9) is False
    assert meets(1e7) is True  # ">=", not ">"
    assert meets(1e7 + 0.1) is True
    assert meets(None) is None
    row = bench_envs.absolute_target(Row("envs", "x", 2e7, "steps/s", ratio=0.5))
    assert row.target == ">= 1e7 steps/s" and row.meets is True  # the value decides, never the ratio


def test_the_target_batch_row_carries_the_absolute_target(monkeypatch):
    monkeypatch.setattr(bench_envs, "TARGET_BATCH", 64)
    rows = bench_envs.measure(tiny_spec(popgym=False), None, use_ray=False)
    for row in rows:
        if row.case.endswith(" batch 64"):
            assert row.target == ">= 1e7 steps/s" and row.meets == (row.value >= 1e7)
            assert "absolute" in row.note and row.baseline.endswith(" single")
        else:
            assert row.target is None and row.meets is None


def test_one_core_pins_and_restores_affinity():
    if not hasattr(os, "sched_setaffinity"):
        pytest.skip("no sched_setaffinity on this platform")
    before = os.sched_getaffinity(0)
    with bench_envs.one_core() as core:
        assert os.sched_getaffinity(0) == {core} and core in before
    assert os.sched_getaffinity(0) == before


def test_random_actions_for_non_discrete_spaces_are_seeded_and_valid():
    from palimpsest.rl.throughput import random_actions

    space = gymnasium.spaces.MultiDiscrete([8, 8])
    first, again = random_actions(space, 20, seed=3), random_actions(space, 20, seed=3)
    assert all(space.contains(a) for a in first)
    assert np.array_equal(np.stack(first), np.stack(again))
    discrete = random_actions(gymnasium.spaces.Discrete(4), 50, seed=0)
    assert discrete == np.random.default_rng(0).integers(0, 4, size=50).tolist()  # single_rate's draws, unchanged
    assert random_actions(gymnasium.spaces.Discrete(4), 3, seed=0, batch=5).shape == (3, 5)


def test_popgym_multidiscrete_env_steps_single_and_synced():
    pytest.importorskip("popgym")
    from palimpsest.rl.throughput import single_rate, vector_rate

    bench_envs.popgym_envs()  # registers POPGym's ids
    assert single_rate("popgym-BattleshipEasy-v0", 30) > 0  # MultiDiscrete([8, 8]) actions
    assert vector_rate("popgym-BattleshipEasy-v0", 3, 5, vectorization_mode="sync") > 0
