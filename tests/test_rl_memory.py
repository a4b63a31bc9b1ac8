"""Memory cells: stepping one step at a time equals the whole sequence, and the state carries information."""

from __future__ import annotations

import pytest
import torch

from palimpsest.rl.catalog import AGENTS
from palimpsest.rl.memory import MEMORIES

INPUTS, HIDDEN, B, T = 5, 16, 3, 9


def batched(state: dict) -> dict:
    return {k: v.expand(B, *v.shape).clone() for k, v in state.items()}


@pytest.mark.parametrize("name", sorted(MEMORIES))
def test_stepping_one_step_at_a_time_equals_the_whole_sequence(name):
    torch.manual_seed(0)
    cell = MEMORIES[name](INPUTS, HIDDEN).eval()
    x = torch.randn(B, T, INPUTS)
    whole, final = cell(x, batched(cell.initial_state()))
    assert whole.shape == (B, T, HIDDEN)
    state, steps = batched(cell.initial_state()), []
    for t in range(T):
        y, state = cell(x[:, t : t + 1], state)
        steps.append(y)
    assert torch.allclose(torch.cat(steps, dim=1), whole, atol=1e-5)
    assert all(torch.allclose(final[k], state[k], atol=1e-5) for k in final)
    for key, value in cell.initial_state().items():  # RLlib's form: no batch dimension
        assert final[key].shape == (B, *value.shape), key


@pytest.mark.parametrize("name", sorted(MEMORIES))
def test_the_state_carries_what_was_seen_and_the_memoryless_baseline_carries_nothing(name):
    torch.manual_seed(0)
    cell = MEMORIES[name](INPUTS, HIDDEN).eval()
    x = torch.randn(1, T, INPUTS)
    changed = x.clone()
    changed[:, 0] = torch.randn(1, INPUTS) * 3  # only the first observation differs (not a shift: LayerNorm)
    with torch.no_grad():
        a, _ = cell(x, {k: v[None] for k, v in cell.initial_state().items()})
        b, _ = cell(changed, {k: v[None] for k, v in cell.initial_state().items()})
    later = (a[:, -1] - b[:, -1]).abs().max().item()
    if name == "none":
        assert later == 0.0
    else:
        assert later > 1e-4, later


@pytest.mark.parametrize("name", sorted(MEMORIES))
def test_gradients_reach_the_first_step_through_the_memory(name):
    if name in ("none", "gtrxl"):  # gtrxl: the paper stops gradients at the memory window (sg(M))
        pytest.skip("no gradient path through memory, by design")
    torch.manual_seed(0)
    cell = MEMORIES[name](INPUTS, HIDDEN)
    x = torch.randn(2, T, INPUTS, requires_grad=True)
    y, _ = cell(x, {k: v.expand(2, *v.shape).clone() for k, v in cell.initial_state().items()})
    y[:, -1].sum().backward()
    assert x.grad[:, 0].abs().sum() > 0


@pytest.mark.parametrize("agent", list(AGENTS))
def test_every_agent_is_an_rlmodule_that_runs_one_step_and_a_training_chunk(agent):
    import gymnasium
    from ray.rllib.core.columns import Columns

    import palimpsest_envs  # noqa: F401  (registers the environments)
    from palimpsest.rl.module import MemoryAgent

    env = gymnasium.make("palimpsest/EndlessTMaze-v0", num_corridors=2)
    module = MemoryAgent(observation_space=env.observation_space, action_space=env.action_space,
                         model_config={"agent": agent, "hidden": 16, "max_seq_len": 8})
    state = {k: torch.as_tensor(v)[None].expand(4, *v.shape).clone() for k, v in module.get_initial_state().items()}
    step = module.forward_inference({Columns.OBS: torch.zeros(4, 1, 3), Columns.STATE_IN: state})
    assert step[Columns.ACTION_DIST_INPUTS].shape == (4, 1, 3)
    assert {k: v.shape for k, v in step[Columns.STATE_OUT].items()} == {k: v.shape for k, v in state.items()}
    chunk = {Columns.OBS: torch.rand(4, 8, 3), Columns.STATE_IN: state}
    out = module.forward_train(chunk)
    assert out[Columns.ACTION_DIST_INPUTS].shape == (4, 8, 3) and out[Columns.EMBEDDINGS].shape == (4, 8, 16)
    assert module.compute_values(chunk).shape == (4, 8)
    assert torch.allclose(module.compute_values(chunk, out[Columns.EMBEDDINGS]), module.compute_values(chunk))


def test_gtrxl_runs_a_chunk_at_once_with_the_gradients_of_stepping():
    """The whole-chunk form (sliding-window mask) against T one-step calls: same outputs, and the same
    gradients for every weight and input — sg(M) stops at the window in both, never at the step itself."""
    torch.manual_seed(0)
    cell = MEMORIES["gtrxl"](INPUTS, HIDDEN, window=4)  # a window shorter than the chunk: entries slide out
    x = torch.randn(B, T, INPUTS, requires_grad=True)
    start = batched(cell.initial_state())
    start["memory"] = torch.randn_like(start["memory"])
    start["valid"][:] = 1
    start["valid"][:, :2] = 0  # two empty slots, two filled ones carried in
    with torch.no_grad():  # positions matter: a bias per distance that is not flat
        for block in cell.blocks:
            block.distance_bias.copy_(torch.randn_like(block.distance_bias))
    whole, _ = cell(x, start)
    (whole * torch.linspace(0, 1, HIDDEN)).sum().backward()
    chunk_grads = [p.grad.clone() for p in cell.parameters()] + [x.grad.clone()]
    cell.zero_grad()
    x.grad = None
    state, outputs = start, []
    for t in range(T):
        y, state = cell(x[:, t : t + 1], state)
        outputs.append(y)
    (torch.cat(outputs, dim=1) * torch.linspace(0, 1, HIDDEN)).sum().backward()
    step_grads = [p.grad for p in cell.parameters()] + [x.grad]
    assert torch.allclose(torch.cat(outputs, dim=1), whole, atol=1e-5)
    for a, b in zip(chunk_grads, step_grads):
        assert torch.allclose(a, b, atol=1e-5)
