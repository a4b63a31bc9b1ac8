"""`joint`: the upper bound — at task t, train on the union of tasks 0..t.

Cumulative joint training ("multi-task" in the GEM paper's terms): it sees every
earlier task's data again, which is what the other methods are not allowed to do.
"""

from palimpsest.train.hooks import LoopContext, StepBatch, TrainingMethod
from palimpsest.train.methods import MethodInfo
from palimpsest.train.sampling import derive_seed, global_batch_indices

METHOD = MethodInfo(
    name="joint", family="continual", implementation="Joint",
    summary="at task t train on tasks 0..t together (upper bound)", paper="Lopez-Paz & Ranzato, 2017 (multi-task)",
    private_reason="it resamples earlier tasks' examples outside the Poisson sampler",
)


class Joint(TrainingMethod):
    def batch(self, ctx: LoopContext, step: int) -> StepBatch:
        seen = [item for task in ctx.tasks[: ctx.task + 1] for item in task]
        indices = global_batch_indices(step, num_examples=len(seen), batch_size=ctx.batch_size,
                                       seed=derive_seed(ctx.seed, "joint-order", ctx.task))
        return StepBatch.of_task([seen[i] for i in indices])
