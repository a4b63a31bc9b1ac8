"""Every job kind in one place: its spec model, runner, search objectives and report section.

Adding a kind is its spec model (`spec/<kind>.py`), its runner (`runners/<kind>.py`), its
report section (`report/<kind>.py`) and one `KindInfo` here; the CLI, the spec loader, the
search (`palimpsest tune`) and the report read everything else from it.

This module imports nothing of the platform at load time: the spec loader reads it, and the
models, runners and report sections it names are imported when first asked for (runners pull
torch and Ray). `tests/test_architecture.py` follows these names like imports.

A runner module has `prepare(spec, *, saved_tokenizer=None)` (raises `DataError` for data
that cannot run) and `run(spec, prepared, folder, *, use_ray=True, ...) -> summary`. A
report section has `rows(summary) -> (header, rows)` (the results table of report.md and of
the CLI), `plots(folder, summary) -> [paths]` and `notes(summary) -> [lines]`, and may have
`after(summary) -> str` (what the CLI's table title says the results are after).
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from types import ModuleType

# ----------------------------------------------------------------------------- search objectives

TRAIN_SETS = ("train", "holdout", "eval", "holdout_rules")
EVAL_METRICS = ("answer_accuracy", "token_accuracy", "loss")
MIA_ATTACKS = ("loss", "zlib", "min_k")
TRAIN_PROGRESS = tuple(f"final.{s}.{m}" for s in TRAIN_SETS for m in EVAL_METRICS)
UNLEARN_REQUEST = ("forget_quality", "model_utility", "forget_rouge", "forget_truth_ratio", "privleak",
                   "extraction_strength", "exact_memorization", "mia.loss", "mia.zlib", "mia.min_k",
                   "mia.min_k_plus_plus")


@dataclass(frozen=True)
class KindInfo:
    """What the platform knows of one job kind.

    objectives: what a finished trial of a search reports (keys of its summary.json, nested keys
    dotted); progress: the ones also reported while it runs, once per `unit` (only those let
    ASHA and PBT act). A kind with no objectives cannot be searched.
    """

    name: str
    spec_model: str  # "module:Class" of its pydantic model
    runner_module: str
    report_module: str
    objectives: tuple[str, ...] = ()
    progress: tuple[str, ...] = ()
    unit: str | None = None
    needs_ray: bool = False  # `run --no-ray` is refused
    one_worker_without_ray: bool = True  # `--no-ray` needs scaling.num_workers 1 (a bench skips its Ray cases)
    validate_loads_data: bool = False  # `validate` prepares it as `run` would (a private job's always do)
    searchable_note: str | None = None  # why `palimpsest tune` refuses it, when it does
    pbt: bool = False  # its trials checkpoint at every report, as PBT's exploit step needs

    @property
    def spec(self) -> type:
        module, name = self.spec_model.split(":")
        return getattr(importlib.import_module(module), name)

    @property
    def runner(self) -> ModuleType:
        return importlib.import_module(self.runner_module)

    @property
    def report(self) -> ModuleType:
        return importlib.import_module(self.report_module)


KINDS: dict[str, KindInfo] = {info.name: info for info in (
    KindInfo(
        "train", "palimpsest.spec.train:TrainJob", "palimpsest.runners.train", "palimpsest.report.train",
        objectives=TRAIN_PROGRESS + tuple(f"mia.attacks.{a}.auc" for a in MIA_ATTACKS) + ("rule_accuracy",
                                                                                          "cost.wall_s"),
        progress=TRAIN_PROGRESS,  # every eval.eval_every steps
        unit="evaluation"),
    KindInfo(
        "continual", "palimpsest.spec.continual:ContinualJob", "palimpsest.runners.continual",
        "palimpsest.report.continual",
        objectives=("acc", "bwt", "fwt", "forgetting", "min_acc", "wc_acc", "general_loss", "rule_accuracy",
                    "cost.wall_s"),
        progress=("acc", "general_loss"),  # after each task: ACC over the tasks seen so far
        unit="task"),
    KindInfo(
        "privacy_sweep", "palimpsest.spec.privacy_sweep:PrivacySweepJob", "palimpsest.runners.privacy_sweep",
        "palimpsest.report.privacy_sweep", validate_loads_data=True,
        searchable_note="a privacy_sweep is a sweep already; search a train job's privacy fields instead"),
    KindInfo(
        "unlearn", "palimpsest.spec.unlearn:UnlearnJob", "palimpsest.runners.unlearn", "palimpsest.report.unlearn",
        objectives=UNLEARN_REQUEST + ("cost.ratio", "cost.unlearn_wall_s"),
        progress=UNLEARN_REQUEST,  # after each request
        unit="request", validate_loads_data=True),
    KindInfo(
        "rl", "palimpsest.spec.rl:RLJob", "palimpsest.runners.rl", "palimpsest.report.rl",
        objectives=("best_success_rate", "test_success_rate", "best_mean_return"),
        progress=("best_success_rate",),  # every greedy evaluation
        unit="evaluation", needs_ray=True, validate_loads_data=True, pbt=True),
    KindInfo(
        "bench", "palimpsest.spec.bench:BenchJob", "palimpsest.bench.runner", "palimpsest.report.bench",
        one_worker_without_ray=False,
        searchable_note="a bench measures; it has no objective to search"),
)}

# A search folder's summary (`palimpsest tune`) is of kind "tune": its report section.
SEARCH_REPORT = "palimpsest.report.tune"


def kind_of(name: str) -> KindInfo:
    """The kind named `name` (KeyError if none)."""
    return KINDS[name]


def report_section(summary_kind: str | None) -> ModuleType:
    """The report section of a summary's kind (a search's, or a job kind's; train's for an unknown one)."""
    if summary_kind == "tune":
        return importlib.import_module(SEARCH_REPORT)
    return (KINDS.get(summary_kind or "") or KINDS["train"]).report
