"""Differential privacy arithmetic for the `privacy` section, on Opacus's accountants.

DP-SGD (Abadi et al., 2016): Poisson-sampled batches, per-example gradients clipped to
`max_grad_norm`, Gaussian noise of std σ·C added to their sum, divided by the expected
batch size. What this module decides before training:

- `calibrate`: σ for (ε, δ, sample rates, planned steps) with Opacus's own
  `get_noise_multiplier`, then checked against the accountant on the exact planned
  history; σ is raised until the ε spent after the last planned step is ≤ the target
  (never trust the search alone: DESIGN.md's 93-batch trap);
- `PrivacyPlan`: what every worker needs (picklable, part of the loop config);
- `epsilon_spent`: ε of a step history, by the same accountant.

A continual run spends one budget over its whole stream: every task's steps are composed,
as if each example could appear in every task (conservative when tasks are disjoint).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

ACCOUNTANTS = ("prv", "rdp")
GRAD_SAMPLE_MODES = ("hooks", "ghost", "functorch", "ghost_fsdp")


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
                "dataset_size": self.dataset_size, "unit": "example"}


def epsilon_spent(history, delta: float, accountant: str) -> float:
    """ε after the steps in `history` ([(σ, sample rate, steps), ...]) for δ, by `accountant`."""
    from opacus.accountants import create_accountant

    history = [tuple(entry) for entry in history if entry[2] > 0]
    if not history:
        return 0.0
    counter = create_accountant(mechanism=accountant)
    counter.history = history
    with warnings.catch_warnings():  # RDP's "optimal order is the largest alpha": the bound holds, only looser
        warnings.simplefilter("ignore", UserWarning)
        return float(counter.get_epsilon(delta=delta))


def default_delta(dataset_size: int) -> float:
    """1/(10·N): below 1/N, the point where releasing one whole example stays within δ."""
    return 1.0 / (10 * dataset_size)


def calibrate(*, epsilon: float, delta: float, sample_rates, steps_per_task: int, accountant: str) -> float:
    """The noise multiplier σ whose ε after every planned step is ≤ `epsilon`.

    Raises:
        BudgetError: no σ Opacus considers reaches the budget.
    """
    from opacus.accountants.utils import get_noise_multiplier

    rates = tuple(float(r) for r in sample_rates)
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


def make_plan(privacy, *, task_sizes: list[int], batch_size: int, steps_per_task: int) -> PrivacyPlan:
    """Calibrate the spec's `privacy` section for tasks of `task_sizes` examples.

    Raises:
        BudgetError: δ ≥ 1/N, a batch larger than a task, or an unreachable ε.
    """
    total = sum(task_sizes)
    delta = privacy.delta if privacy.delta is not None else default_delta(total)
    if delta >= 1.0 / total:
        raise BudgetError(f"privacy.delta: {delta:g} must be below 1/N = {1.0 / total:.3g} (N = {total} examples); "
                          "a δ that large allows releasing an example outright. Default: 1/(10·N)")
    small = [i for i, size in enumerate(task_sizes) if size < batch_size]
    if small:
        raise BudgetError(f"training.batch_size: {batch_size} (the expected Poisson batch) exceeds the "
                          f"{task_sizes[small[0]]} examples of task {small[0]}; the sample rate must be ≤ 1")
    rates = tuple(batch_size / size for size in task_sizes)
    sigma = calibrate(epsilon=privacy.epsilon, delta=delta, sample_rates=rates, steps_per_task=steps_per_task,
                      accountant=privacy.accountant)
    return PrivacyPlan(epsilon=privacy.epsilon, delta=delta, noise_multiplier=sigma,
                       max_grad_norm=privacy.max_grad_norm, accountant=privacy.accountant,
                       grad_sample_mode=privacy.grad_sample_mode, sample_rates=rates, expected_batch_size=batch_size,
                       steps_per_task=steps_per_task, dataset_size=total)
