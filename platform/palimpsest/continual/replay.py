"""`replay`: experience replay (ER) from a reservoir memory.

Chaudhry et al., "On Tiny Episodic Memories in Continual Learning", 2019, Algorithm 1
(ER with reservoir sampling; Vitter, "Random Sampling with a Reservoir", 1985): for each
incoming batch B_n, draw a memory batch B_M from M, take one SGD step on B_n ∪ B_M, then
stream B_n through the reservoir. The memory therefore fills from the first step on and
every example seen so far — earlier steps of the current task included — has the same
chance, capacity / seen, to be in it.

`form: er` (default) is that algorithm: the step's batch is `batch_size` current examples
plus `memory_batch_size` memory examples (default: as many as the current batch), one
token-mean loss over both. `form: ratio` is the older variant kept as an option: the
buffer is filled at task ends only, and a fixed batch holds round(replay_ratio ·
batch_size) memory examples in place of current ones.
"""

from __future__ import annotations

from palimpsest.train.hooks import LoopContext, StepBatch, TrainingMethod
from palimpsest.train.methods import MethodInfo, Param
from palimpsest.train.sampling import reservoir_update, rng_for

METHOD = MethodInfo(
    name="replay", family="continual", implementation="Replay",
    summary="experience replay: a reservoir memory updated as the stream is seen, a memory batch added to every "
            "batch", paper="Chaudhry et al., 2019 (ER)",
    params=(
        Param("buffer_size", "int", 64, "examples the memory holds", low=1),
        Param("memory_batch_size", "int", None, "memory examples added to each batch (er form); default: the "
              "training batch size", low=1, nullable=True),
        Param("form", "str", "er", "er: Chaudhry et al.'s algorithm; ratio: task-end buffer, share of a fixed batch",
              choices=("er", "ratio")),
        Param("replay_ratio", "float", 0.5, "share of the batch drawn from memory (ratio form)", low=0, high=1,
              low_open=True, high_open=True),
    ),
    private_reason="its buffer keeps raw training examples and replays them outside the Poisson sampler",
)

MEMORY_PART = "memory"


class Replay(TrainingMethod):
    def __init__(self, buffer_size: int, memory_batch_size: int | None, form: str, replay_ratio: float):
        self.buffer_size, self.memory_batch_size = buffer_size, memory_batch_size
        self.form, self.replay_ratio = form, replay_ratio
        self.buffer: list[tuple[int, int]] = []  # (task, index) references: small to checkpoint
        self.seen = 0

    def memory_count(self, batch_size: int) -> int:
        if not self.buffer:
            return 0
        if self.form == "ratio":
            return int(round(self.replay_ratio * batch_size))
        return self.memory_batch_size or batch_size

    def batch(self, ctx: LoopContext, step: int) -> StepBatch:
        n_memory = self.memory_count(ctx.batch_size)
        current = ctx.batch_size - n_memory if self.form == "ratio" else ctx.batch_size
        parts = {"task": ctx.task_batch(step, current)}
        if n_memory:
            rng = rng_for(ctx.seed, "replay-draw", ctx.task, step)
            picks = rng.choice(len(self.buffer), size=n_memory, replace=len(self.buffer) < n_memory)
            parts[MEMORY_PART] = [ctx.tasks[t][i] for t, i in (self.buffer[p] for p in picks)]
        return StepBatch(parts)

    def after_step(self, ctx: LoopContext, step: int, batch: StepBatch) -> None:
        if self.form != "er":
            return
        # B_n enters the reservoir after the step that trained on it (Algorithm 1, last line).
        current = len(batch.parts["task"])
        arrived = [(ctx.task, i) for i in ctx.task_batch_indices(step - 1, current)]
        self.seen = reservoir_update(self.buffer, self.seen, arrived, capacity=self.buffer_size,
                                     rng=rng_for(ctx.seed, "reservoir", ctx.task, step))

    def after_task(self, ctx: LoopContext) -> None:
        if self.form != "ratio":
            return
        finished = ((ctx.task, i) for i in range(len(ctx.tasks[ctx.task])))
        self.seen = reservoir_update(self.buffer, self.seen, finished, capacity=self.buffer_size,
                                     rng=rng_for(ctx.seed, "reservoir", ctx.task))

    def state_dict(self) -> dict:
        return {"buffer": list(self.buffer), "seen": self.seen}

    def load_state_dict(self, state: dict) -> None:
        self.buffer = [tuple(x) for x in state["buffer"]]
        self.seen = state["seen"]
