"""`joint`: the upper bound — at task t, train on the union of tasks 0..t.

Cumulative joint training ("multi-task" in the GEM paper's terms): it sees every
earlier task's data again, which is what the other methods are not allowed to do.
"""

from palimpsest.continual import register
from palimpsest.continual.base import ContinualMethod, LoopState, hash_seed
from palimpsest.train.batching import global_batch_indices


@register("joint")
class Joint(ContinualMethod):
    def global_batch(self, state: LoopState, step: int):
        seen = [item for task in state.tasks[: state.task + 1] for item in task]
        indices = global_batch_indices(step, num_examples=len(seen), batch_size=state.batch_size,
                                       seed=hash_seed(state.seed, state.task))
        return [seen[i] for i in indices]
