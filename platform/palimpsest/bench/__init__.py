"""Side-by-side benchmarks: each section measures our code and what a user would otherwise use in one run.

A section is a function `measure(spec: BenchJob, workdir: Path, use_ray: bool) -> list[Row]`
registered in `SECTIONS` by its `benchmark.type`. Every figure is compared with a
baseline measured in the same run (interleaved repetitions, best of N), so the ratios
hold on a noisy machine; absolute figures are printed beside them for context only.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field


@dataclass
class Row:
    """One measured case. `ratio` is `value / baseline's value` when `baseline` names a row of the same section."""

    section: str
    case: str
    value: float | None
    unit: str  # "tokens/s", "steps/s", "s/step", "s"
    baseline: str | None = None
    ratio: float | None = None
    target: str | None = None  # e.g. ">= 0.95": what the ratio must meet (README, "Benchmarks")
    meets: bool | None = None
    note: str = ""
    extra: dict = field(default_factory=dict)  # figures printed beside it (forget quality, MFU, ...)

    def to_dict(self) -> dict:
        return asdict(self)


def compare(rows: list[Row], case: str, baseline: str, *, target: str | None = None) -> Row:
    """Set `case`'s ratio against `baseline` (both in `rows`) and check it against `target` ('>= x' or '<= x')."""
    by_case = {row.case: row for row in rows}
    row, base = by_case[case], by_case[baseline]
    row.baseline = baseline
    if row.value is not None and base.value:
        row.ratio = round(row.value / base.value, 4)
    if target is not None:
        row.target = target
        if row.ratio is not None:
            op, bound = target.split()
            row.meets = row.ratio >= float(bound) if op == ">=" else row.ratio <= float(bound)
    return row


def best(values: list[float], *, higher_is_better: bool) -> float:
    """The best of interleaved repetitions: noise on a shared machine only ever slows a run down."""
    return max(values) if higher_is_better else min(values)


SECTIONS = {"loop": ("llm", "measure_loop"), "deepspeed": ("llm", "measure_deepspeed"),
            "private": ("llm", "measure_private"), "unlearn": ("unlearn", "measure"), "envs": ("envs", "measure"),
            "rllib": ("rllib", "measure"), "ppo": ("ppo", "measure")}


def section(kind: str):
    """The `measure` function of a `benchmark.type` (imported on demand: each pulls a heavy stack)."""
    import importlib

    module, function = SECTIONS[kind]
    return getattr(importlib.import_module(f"palimpsest.bench.{module}"), function)
