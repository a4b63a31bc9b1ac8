"""The structure the code promises: no import circles, one KindInfo per kind that the code really uses.

No Ray, no torch: seconds.
"""

from __future__ import annotations

import ast
import graphlib
import importlib
import typing
from pathlib import Path

import pytest

from palimpsest.kinds import KINDS, SEARCH_REPORT, report_section

ROOTS = [Path(__file__).resolve().parents[1] / "platform", Path(__file__).resolve().parents[1] / "envs"]


def _modules() -> dict[str, Path]:
    found = {}
    for root in ROOTS:
        for path in root.rglob("*.py"):
            parts = list(path.relative_to(root).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            found[".".join(parts)] = path
    return found


def import_graph(modules: dict[str, Path]) -> dict[str, set[str]]:
    """Module -> the modules of ours it imports, at any depth of its code (a function's lazy import
    counts: it runs as surely, only later). A module that reads `palimpsest.kinds` and resolves a kind's
    spec model, runner or report section (`.spec`, `.runner`, `.report`, `report_section`) imports them
    all: the kinds table itself is a list of names, like entry points."""

    def known(name: str) -> str | None:
        while name and name not in modules:
            name = name.rpartition(".")[0]
        return name or None

    named = {"spec": {i.spec_model.split(":")[0] for i in KINDS.values()},
             "runner": {i.runner_module for i in KINDS.values()},
             "report": {i.report_module for i in KINDS.values()} | {SEARCH_REPORT}}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        edges, resolved = set(), set()
        for node in ast.walk(ast.parse(path.read_text())):
            targets = []
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join(parts + ([base] if base else []))
                targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base for alias in node.names]
            elif isinstance(node, ast.Attribute) and node.attr in named:
                resolved.add(node.attr)
            elif isinstance(node, ast.Call) and getattr(node.func, "id", None) == "report_section":
                resolved.add("report")
            edges |= {target for t in targets if (target := known(t)) and target != name}
        if "palimpsest.kinds" in edges:
            edges |= {m for what in resolved for m in named[what]} - {name}
        graph[name] = edges
    return graph


def test_no_module_imports_itself_back():
    graph = import_graph(_modules())
    try:
        tuple(graphlib.TopologicalSorter(graph).static_order())
    except graphlib.CycleError as error:
        pytest.fail(f"import circle: {' -> '.join(error.args[1])}")


def test_the_cycle_check_sees_lazy_imports_and_kind_names():
    """The walk that finds no circle would find one: a function-level import back, or a kind's module
    that imports its way back to kinds."""
    graph = import_graph(_modules())
    assert "palimpsest.train.session" in graph["palimpsest.runners.common"] or \
        "palimpsest.manifest" in graph["palimpsest.runners.common"]
    assert "palimpsest.runners.rl" in graph["palimpsest.cli.run"]  # resolving a kind's runner imports it
    assert "palimpsest.spec.rl" in graph["palimpsest.spec.loading"]
    graph["palimpsest.manifest"] = graph["palimpsest.manifest"] | {"palimpsest.storage"}  # storage imports manifest
    with pytest.raises(graphlib.CycleError):
        tuple(graphlib.TopologicalSorter(graph).static_order())


@pytest.mark.parametrize("name", sorted(KINDS))
def test_each_kind_names_a_spec_runner_and_report_section_that_exist(name):
    info = KINDS[name]
    literal = typing.get_args(info.spec.model_fields["kind"].annotation)
    assert literal == (name,), f"{info.spec_model}: kind is {literal}, the KindInfo says {name}"
    runner = info.runner
    assert callable(runner.prepare) and callable(runner.run)
    for function in ("rows", "plots", "notes"):
        assert callable(getattr(info.report, function)), f"{info.report_module}.{function}"
    assert report_section(name) is info.report
    if info.objectives:  # searchable: a trial counts its units, and reports progress on a subset of its objectives
        assert info.unit and set(info.progress) <= set(info.objectives)
        assert callable(info.spec.trial_units) and callable(info.spec.units_done)
    else:
        assert info.searchable_note


def test_search_objectives_are_read_from_the_kinds():
    from palimpsest.spec import tuning

    assert tuning.METRICS == {n: i.objectives for n, i in KINDS.items() if i.objectives}
    assert tuning.PROGRESS["unlearn"] is KINDS["unlearn"].progress
    assert set(tuning.UNIT) == {"train", "continual", "unlearn", "rl"}


def test_only_the_kinds_module_lists_the_kinds():
    """No per-kind chains in the CLI, the spec loader or the report's dispatch: they read palimpsest.kinds."""
    modules = _modules()
    for name in ("palimpsest.cli.run", "palimpsest.cli.common", "palimpsest.report", "palimpsest.tune"):
        text = modules[name].read_text()
        for kind in set(KINDS) - {"bench"}:  # (`palimpsest bench` takes bench specs only, and says so)
            assert f'"{kind}"' not in text, f"{name} names kind {kind}"
    assert not hasattr(importlib.import_module("palimpsest.runners"), "RUNNERS")
