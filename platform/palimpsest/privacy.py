"""Differential privacy arithmetic for the `privacy` section, on Opacus's accountants.

DP-SGD (Abadi et al., 2016): Poisson-sampled batches, per-example gradients clipped to
`max_grad_norm`, Gaussian noise of std σ·C added to their sum, divided by the expected
batch size. What this module decides before training:

- `calibrate`: σ for (ε, δ, sample rates, planned steps) with Opacus's own
  `get_noise_multiplier`, then checked against the accountant on the exact planned
  history; σ is raised until the ε spent after the last planned step is ≤ the target
  (never trust the search alone: docs/design.md, "Opacus (the 93-batch trap)");
- `PrivacyPlan`: what every worker needs (picklable, part of the loop config);
- `epsilon_spent`: ε of a step history, by the same accountant.

Both are pure functions of their arguments and cached in the process (`functools.lru_cache`):
Opacus's PRV accountant takes ~0.4 s per ε on this project's CPUs, and a search, a sweep or
an unlearning job calibrates the same plan and reads the same history many times.

A continual run spends one budget over its whole stream: every task's steps are composed,
as if each example could appear in every task (conservative when tasks are disjoint).

The guarantee assumes that the noise and the batch membership are secret. A private run
therefore draws both from a fresh 256-bit secret (`fresh_secret`, OS entropy) made at its
start and kept only in its Ray checkpoints (`trainer_state.pt`, owner-only), so a restart
or `--resume` replays the same steps while nothing published (spec, seed, summary, logs,
the exported model) lets anyone recompute them. `privacy.reproducible: true` draws them
from the public seed instead, and then the run says it has no guarantee (`GUARANTEE_NONE`).
Every model released from the same data spends budget: `released_epsilon` composes their
histories with the same accountant.
"""

from __future__ import annotations

import functools
import secrets
import warnings
from dataclasses import dataclass

import numpy as np

from palimpsest.spec.common import GUARANTEE_NONE  # the one wording, shared with `validate`

ACCOUNTANTS = ("prv", "rdp")
GRAD_SAMPLE_MODES = ("hooks", "ghost", "functorch", "ghost_fsdp")


SECRET_BITS = 256


def fresh_secret() -> int:
    """A 256-bit secret from the operating system's entropy: a private run's noise and batches derive from it."""
    return secrets.randbits(SECRET_BITS)


def method_secret(secret: int, method: int) -> int:
    """The secret of the `method`-th model a run trains: every release gets independent noise and batches.

    A 256-bit value from numpy's SeedSequence over (secret, method): knowing one method's
    secret tells nothing usable about another's.
    """
    words = np.random.SeedSequence([int(secret), 0x6D657468, int(method)]).generate_state(SECRET_BITS // 32,
                                                                                         dtype=np.uint32)
    return int.from_bytes(np.asarray(words, dtype="<u4").tobytes(), "little")


def guarantee(plan: "PrivacyPlan", epsilon: float) -> str:
    """What the run's ε means, in one line (summary.json → privacy.guarantee)."""
    if plan.reproducible:
        return GUARANTEE_NONE
    return (f"({epsilon:.4g}, {plan.delta:.3g})-DP per {plan.unit}: noise and Poisson batches from a per-run "
            "secret kept only in the run's checkpoints (ray/, owner-only)")


class BudgetError(ValueError):
    """The requested (ε, δ) cannot be met for this data size, batch and number of steps."""


@dataclass(frozen=True)
class PrivacyPlan:
    """A calibrated private run: what every worker needs."""

    epsilon: float  # the target; the run never spends more
    delta: float
    noise_multiplier: float  # σ: noise std = σ · max_grad_norm
    max_grad_norm: float  # per-example clipping norm C
    accountant: str  # prv | rdp
    grad_sample_mode: str  # hooks | ghost | functorch | ghost_fsdp
    sample_rates: tuple[float, ...]  # per task: expected batch / task size (Poisson sampling)
    expected_batch_size: int  # the logical batch: an expectation under Poisson sampling
    steps_per_task: int
    dataset_size: int  # examples under protection (all tasks together)
    reproducible: bool = False  # noise and batches from the public seed: no guarantee
    unit: str = "example"  # what the guarantee protects: example | person

    @property
    def planned_steps(self) -> int:
        return self.steps_per_task * len(self.sample_rates)

    def history(self, steps_done: int | None = None) -> list[tuple[float, float, int]]:
        """The accountant history after `steps_done` steps of the stream (default: all planned)."""
        left = self.planned_steps if steps_done is None else steps_done
        entries = []
        for rate in self.sample_rates:
            steps = min(left, self.steps_per_task)
            if steps > 0:
                entries.append((self.noise_multiplier, rate, steps))
            left -= steps
        return entries

    def summary(self, history: list, spent: float) -> dict:
        """The summary.json block of a run that took `history` and spent `spent`."""
        return {"epsilon": spent, "epsilon_target": self.epsilon, "delta": self.delta,
                "noise_multiplier": self.noise_multiplier, "max_grad_norm": self.max_grad_norm,
                "sample_rate": self.sample_rates[0] if len(set(self.sample_rates)) == 1 else list(self.sample_rates),
                "expected_batch_size": self.expected_batch_size, "steps": sum(h[2] for h in history),
                "accountant": self.accountant, "grad_sample_mode": self.grad_sample_mode,
                "dataset_size": self.dataset_size, "unit": self.unit, "reproducible": self.reproducible,
                "guarantee": guarantee(self, spent),
                # the accountant's own history ([σ, q, steps] per entry): what released_epsilon composes
                "history": [[float(s), float(q), int(n)] for s, q, n in history]}


def epsilon_spent(history, delta: float, accountant: str) -> float:
    """ε after the steps in `history` ([(σ, sample rate, steps), ...]) for δ, by `accountant`."""
    history = tuple((float(s), float(q), int(n)) for s, q, n in history if n > 0)
    return _epsilon(history, float(delta), accountant) if history else 0.0


@functools.lru_cache(maxsize=4096)
def _epsilon(history: tuple, delta: float, accountant: str) -> float:
    from opacus.accountants import create_accountant

    counter = create_accountant(mechanism=accountant)
    counter.history = list(history)
    with warnings.catch_warnings():  # RDP's "optimal order is the largest alpha": the bound holds, only looser
        warnings.simplefilter("ignore", UserWarning)
        return float(counter.get_epsilon(delta=delta))


def released_epsilon(histories, delta: float, accountant: str) -> float:
    """ε of releasing every model whose accountant history is in `histories`, trained on the same data.

    The histories are concatenated and composed by Opacus's accountant (RDP or PRV
    composition), exactly as one longer run would be: each model's steps read the same
    examples.
    """
    return epsilon_spent([tuple(entry) for history in histories for entry in history], delta, accountant)


def released_privacy(blocks: list[dict | None], *, merge_single: bool = True) -> dict | None:
    """The job-level `privacy` block: what releasing every model of a job together spends.

    `blocks` are the per-model privacy blocks (`PrivacyPlan.summary`), None for a model
    trained on the same data without privacy. The accountant's histories are composed
    (`released_epsilon`); a model trained without privacy, or any drawn from the public
    seed, leaves the whole release without a guarantee, and the block says so.
    `merge_single`: a job of one model gets that model's own block with `released_epsilon` added.
    """
    private = [b for b in blocks if b]
    if not private:
        return None
    delta, accountant, unit = private[0]["delta"], private[0]["accountant"], private[0].get("unit", "example")
    released = released_epsilon([_history_of(b) for b in private], min(b["delta"] for b in private), accountant)
    plain = len(blocks) - len(private)
    if merge_single and len(blocks) == 1:
        return {**private[0], "released_epsilon": released, "models": 1, "not_private_models": 0}
    if any(b.get("reproducible") for b in private):
        meaning = GUARANTEE_NONE
    elif plain:
        meaning = (f"none for the whole release: {plain} model(s) trained on the same data without privacy; "
                   f"the {len(private)} private models together are ({released:.4g}, {delta:.3g})-DP per {unit}")
    else:
        meaning = f"({released:.4g}, {delta:.3g})-DP per {unit} for all {len(private)} models released together"
    return {"released_epsilon": released, "delta": delta, "accountant": accountant, "unit": unit,
            "models": len(private), "not_private_models": plain,
            "per_model_epsilon": [b["epsilon"] for b in private],
            "max_per_model_epsilon": max(b["epsilon"] for b in private), "guarantee": meaning}


def _history_of(block: dict) -> list:
    """A model's accountant history; a summary written before histories were kept: its one (σ, q, steps)."""
    if block.get("history"):
        return block["history"]
    if isinstance(block.get("sample_rate"), list):
        raise ValueError("a privacy block with per-task sample rates and no history cannot be composed")
    return [[block["noise_multiplier"], block["sample_rate"], block["steps"]]]


def default_delta(dataset_size: int) -> float:
    """1/(10·N): below 1/N, the point where releasing one whole example stays within δ."""
    return 1.0 / (10 * dataset_size)


def calibrate(*, epsilon: float, delta: float, sample_rates, steps_per_task: int, accountant: str) -> float:
    """The noise multiplier σ whose ε after every planned step is ≤ `epsilon`.

    Raises:
        BudgetError: no σ Opacus considers reaches the budget.
    """
    return _calibrate(float(epsilon), float(delta), tuple(float(r) for r in sample_rates), int(steps_per_task),
                      accountant)


@functools.lru_cache(maxsize=256)
def _calibrate(epsilon: float, delta: float, rates: tuple, steps_per_task: int, accountant: str) -> float:
    from opacus.accountants.utils import get_noise_multiplier

    total = steps_per_task * len(rates)
    try:
        # The largest rate for every step bounds the true history from above (ε grows with q).
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            sigma = get_noise_multiplier(target_epsilon=epsilon, target_delta=delta, sample_rate=max(rates),
                                         steps=total, accountant=accountant)
    except ValueError:
        raise BudgetError(f"privacy.epsilon: ε={epsilon} with δ={delta:.3g} cannot be reached over {total} steps "
                          f"at sample rate {max(rates):.4g} (Opacus gives up at σ > 1e6); raise epsilon, or "
                          "train fewer steps or with a smaller batch") from None
    history = [(sigma, rate, steps_per_task) for rate in rates]
    for _ in range(200):  # the search's answer, checked on the exact history; 1% more noise while above
        if epsilon_spent(history, delta, accountant) <= epsilon:
            return sigma
        sigma *= 1.01
        history = [(sigma, rate, steps_per_task) for rate in rates]
    raise BudgetError(f"privacy.epsilon: could not find a noise multiplier with ε ≤ {epsilon}")


def make_plan(privacy, *, task_sizes: list[int], batch_size: int, steps_per_task: int,
              total: int | None = None) -> PrivacyPlan:
    """Calibrate the spec's `privacy` section for tasks of `task_sizes` units (examples, or people).

    `total`: the units under protection over all tasks (default: their sum; people who appear
    in several tasks count once).

    Raises:
        BudgetError: δ ≥ 1/N, a batch larger than a task, or an unreachable ε.
    """
    unit = getattr(privacy, "unit", "example")
    units = "people" if unit == "person" else "examples"
    total = sum(task_sizes) if total is None else total
    delta = privacy.delta if privacy.delta is not None else default_delta(total)
    if delta >= 1.0 / total:
        raise BudgetError(f"privacy.delta: {delta:g} must be below 1/N = {1.0 / total:.3g} (N = {total} {units}); "
                          f"a δ that large allows releasing one of the {units} outright. Default: 1/(10·N)")
    small = [i for i, size in enumerate(task_sizes) if size < batch_size]
    if small:
        raise BudgetError(f"training.batch_size: {batch_size} (the expected Poisson batch, in {units}) exceeds the "
                          f"{task_sizes[small[0]]} {units} of task {small[0]}; the sample rate must be ≤ 1")
    rates = tuple(batch_size / size for size in task_sizes)
    sigma = calibrate(epsilon=privacy.epsilon, delta=delta, sample_rates=rates, steps_per_task=steps_per_task,
                      accountant=privacy.accountant)
    return PrivacyPlan(epsilon=privacy.epsilon, delta=delta, noise_multiplier=sigma,
                       max_grad_norm=privacy.max_grad_norm, accountant=privacy.accountant,
                       grad_sample_mode=privacy.grad_sample_mode, sample_rates=rates, expected_batch_size=batch_size,
                       steps_per_task=steps_per_task, dataset_size=total,
                       reproducible=bool(getattr(privacy, "reproducible", False)), unit=unit)


def people_of(tasks) -> tuple[list[list[list[int]]], int]:
    """Per task, the indices of each person's examples (people in first-seen order), and how many distinct
    people all tasks hold. An example's person is its `entity`.

    Raises:
        BudgetError: an example names no person (privacy.unit: person cannot sample it).
    """
    groups, everyone = [], set()
    for t, task in enumerate(tasks):
        by_person: dict[str, list[int]] = {}
        for i, example in enumerate(task):
            if not example.entity:
                raise BudgetError(f"privacy.unit: person needs the person of every training example; example {i} of "
                                  f"task {t} ({example.question[:60]!r}) names none: give data.person_field (the "
                                  "record key naming the person), or use unit: example")
            by_person.setdefault(example.entity, []).append(i)
        groups.append(list(by_person.values()))
        everyone.update(by_person)
    return groups, len(everyone)
