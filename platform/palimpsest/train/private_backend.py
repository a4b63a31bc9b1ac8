"""DP-SGD as a backend of the shared loop, built from Opacus's parts.

What `PrivacyEngine.make_private` assembles, assembled here because the loop, not a
DataLoader, draws the batches:
- the batch: Opacus's `UniformWithReplacementSampler` (Poisson sampling: each example of
  the task joins with probability q, drawn from (noise_seed, task, step) so a restart
  replays it). Person-level privacy (`plan.unit == "person"`) samples people instead, with
  q = B / people, and trains on one example of each sampled person, drawn at random from
  the same secret: with per-example clipping a person moves the sum by at most C, whatever
  their number of examples. This is dp-transformers' user-level construction
  (`dp_transformers.sampler.PoissonAuthorSampler` over an `author_mapping`); where it
  cycles through an author's examples in order, we draw one at random (stateless, so a
  restart replays it) — the bound on a person's contribution, and so the accounting, is
  the same;
- per-example gradients: a GradSampleModule of `grad_sample_mode` (hooks, functorch,
  ghost, ghost_fsdp), around `DifferentiallyPrivateDistributedDataParallel` with several
  workers, or around Opacus's `FSDP2Wrapper` (ghost_fsdp: the weights are sharded);
- clipping and noise: the DP optimizer `get_optimizer_class` names for that mode, with
  `expected_batch_size` = q·N / workers (each worker divides its part; the all-reduce
  averages), noise from a generator seeded by (noise_seed, task, step). `noise_seed` is
  the method's secret (`palimpsest.privacy.method_secret`), never the public job seed
  unless the job asked for `privacy.reproducible` (and was told it voids the guarantee);
- accounting: an Opacus accountant stepped once per optimizer step; its history is the
  state the backend carries across tasks and into every checkpoint, so a resumed run
  continues the same ε.
Gradient accumulation uses Opacus's virtual steps (`signal_skip_step`): every micro-batch
is clipped as it comes; noise is added once per logical batch.
"""

from __future__ import annotations

import contextlib
import warnings

import torch
from transformers import get_scheduler

from palimpsest.models import unwrap
from palimpsest.privacy import PrivacyPlan, epsilon_spent
from palimpsest.train.backend_base import Backend, adamw
from palimpsest.train.config import Optimisation
from palimpsest.train.hooks import StepBatch, per_example_loss
from palimpsest.train.sampling import derive_seed


class PrivateBackend(Backend):
    loss_reduction = staticmethod(per_example_loss)
    uneven_batches = True

    def __init__(self, model: torch.nn.Module, training: Optimisation, plan: PrivacyPlan, *, world_size: int,
                 device: torch.device, carried: dict | None = None, noise_seed: int, people: list | None = None):
        from opacus.accountants import create_accountant
        from opacus.grad_sample.utils import wrap_model
        from opacus.optimizers import get_optimizer_class

        self.plan, self.mode, self.world_size = plan, plan.grad_sample_mode, world_size
        self._noise_seed = int(noise_seed)  # secret: never logged, never in a summary
        if plan.unit == "person" and people is None:
            raise ValueError("person-level privacy needs each task's people (LoopConfig.task_people)")
        self.people = people if plan.unit == "person" else None
        # Opacus's hooks sit on modules whose inputs (token ids) need no gradient, and the
        # FSDP2-wrapped model returns views; both are expected here, neither is a fault.
        warnings.filterwarnings("ignore", message="Full backward hook is firing")
        warnings.filterwarnings("ignore", message=r"FSDP2-wrapped module .* returned a view tensor")
        model = model.to(device)
        model.train()  # Opacus computes per-example gradients in training mode only
        if self.mode == "ghost_fsdp":
            from opacus.utils.fsdp_utils import FSDP2Wrapper

            model = FSDP2Wrapper(model)
            self.shards_parameters = True
        elif world_size > 1:
            from opacus.distributed import DifferentiallyPrivateDistributedDataParallel

            model = DifferentiallyPrivateDistributedDataParallel(model)
        extra = {"max_grad_norm": plan.max_grad_norm} if self.mode.startswith("ghost") else {}
        self.model = wrap_model(model, grad_sample_mode=self.mode, batch_first=True, loss_reduction="mean", **extra)
        if not self.mode.startswith("ghost"):  # a second backward before the step would be a bug: fail loudly
            self.model.forbid_grad_accumulation()
        params = [p for p in self.model.parameters() if p.requires_grad]
        inner = adamw(params, lr=training.lr, weight_decay=training.weight_decay)
        self.scheduler = get_scheduler(training.lr_schedule, inner, num_warmup_steps=training.warmup_steps,
                                       num_training_steps=training.steps)
        self.generator = torch.Generator(device=device)
        optimizer_class = get_optimizer_class(clipping="flat", distributed=world_size > 1,
                                              grad_sample_mode=self.mode)
        self.optimizer = optimizer_class(inner, noise_multiplier=plan.noise_multiplier,
                                         max_grad_norm=plan.max_grad_norm,
                                         expected_batch_size=plan.expected_batch_size / world_size,
                                         loss_reduction="mean", generator=self.generator)
        self.accountant = create_accountant(mechanism=plan.accountant)
        self.accountant.history = [tuple(h) for h in (carried or {}).get("privacy_history", [])]
        self.sample_rate = plan.sample_rates[0]

    # ----------------------------------------------------------------- the loop's hooks

    def choose_batch(self, method, ctx, step: int) -> StepBatch:
        """A Poisson draw from the current task, the same on every rank; seeds this step's noise."""
        from opacus.utils.uniform_sampler import UniformWithReplacementSampler

        items = ctx.tasks[ctx.task]
        self.sample_rate = self.plan.sample_rates[ctx.task]
        groups = self.people[ctx.task] if self.people is not None else None
        draw = torch.Generator().manual_seed(derive_seed(self._noise_seed, "poisson", ctx.task, step))
        sampler = UniformWithReplacementSampler(num_samples=len(groups) if groups is not None else len(items),
                                                sample_rate=self.sample_rate, generator=draw, steps=1)
        (indices,) = list(sampler)
        if groups is not None:  # the sampled people, one example of each
            pick = torch.Generator().manual_seed(derive_seed(self._noise_seed, "person-example", ctx.task, step))
            indices = [groups[p][int(torch.randint(len(groups[p]), (1,), generator=pick))] for p in indices]
        self.generator.manual_seed(derive_seed(self._noise_seed, "dp-noise", ctx.task, step))
        return StepBatch.of_task([items[i] for i in indices])

    def backward(self, loss: torch.Tensor) -> None:
        if self.mode.startswith("ghost"):  # two passes: per-example norms, then the clipped sum
            from opacus.utils.fast_gradient_clipping_utils import DPTensorFastGradientClipping

            DPTensorFastGradientClipping(self.model, self.optimizer, loss, "mean").backward()
        else:
            loss.mean().backward()

    @contextlib.contextmanager
    def accumulating(self, is_last_micro_batch: bool):
        yield
        if not is_last_micro_batch:  # clip this micro-batch into the running sum; no noise, no step yet
            self.optimizer.signal_skip_step(do_skip=True)
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)

    def step(self) -> torch.Tensor:
        self.optimizer.step()  # clip, add noise, divide by the expected batch, AdamW
        self.scheduler.step()
        self.accountant.step(noise_multiplier=self.plan.noise_multiplier, sample_rate=self.sample_rate)
        norm = self._grad_norm()
        self.optimizer.zero_grad(set_to_none=True)
        return norm  # the noised, averaged gradient's norm (per-example norms are clipped inside)

    def _grad_norm(self) -> torch.Tensor:
        """Norm of the noised, averaged gradient the optimizer stepped with (per-example norms are clipped)."""
        squares = torch.zeros((), dtype=torch.float64, device=self.generator.device)
        for p in self.optimizer.params:
            if p.grad is not None:
                grad = p.grad.to_local() if hasattr(p.grad, "to_local") else p.grad  # FSDP2: this rank's shard
                squares += grad.detach().double().pow(2).sum()
        if self.shards_parameters:
            torch.distributed.all_reduce(squares)
        return squares.sqrt()

    def carry_over(self) -> dict:
        return {"privacy_history": [list(h) for h in self.accountant.history]}

    def progress(self) -> dict:
        """ε spent so far (logged with the training loss)."""
        return {"epsilon": epsilon_spent(self.accountant.history, self.plan.delta, self.plan.accountant)}

    def full_state_dict(self) -> dict:
        if not self.shards_parameters:
            return unwrap(self.model).state_dict()
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        # Every rank gets the whole state (the loop reloads it everywhere at a task's end).
        full = get_model_state_dict(unwrap(self.model), options=StateDictOptions(full_state_dict=True))
        return {name: tensor.detach().cpu().clone() for name, tensor in full.items()}

    def state_dict(self) -> dict:
        """Optimizer and schedule; under FSDP2 the whole optimizer state, gathered (every rank must call)."""
        if self.shards_parameters:
            from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

            optimizer = get_optimizer_state_dict(unwrap(self.model), self.optimizer.original_optimizer,
                                                 options=StateDictOptions(full_state_dict=True))
        else:
            optimizer = self.optimizer.state_dict()
        return {"optimizer": optimizer, "scheduler": self.scheduler.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        if self.shards_parameters:  # each rank keeps its own shard of the whole state
            from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

            set_optimizer_state_dict(unwrap(self.model), self.optimizer.original_optimizer, state["optimizer"],
                                     options=StateDictOptions(full_state_dict=True))
        else:
            self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])

    def close(self) -> None:
        if hasattr(self.model, "remove_hooks"):  # the next task's backend wraps the same model again
            self.model.remove_hooks()
