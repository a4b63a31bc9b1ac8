"""Memory cells: stepping one step at a time equals the whole sequence, and the state carries information."""

from __future__ import annotations

import pytest
import torch

from palimpsest.rl.catalog import AGENTS
from palimpsest.rl.memory import MEMORIES, make_cell

INPUTS, HIDDEN, B, T = 5, 16, 3, 9


def batched(state: dict) -> dict:
    return {k: v.expand(B, *v.shape).clone() for k, v in state.items()}


@pytest.mark.parametrize("name", sorted(MEMORIES))
def test_stepping_one_step_at_a_time_equals_the_whole_sequence(name):
    torch.manual_seed(0)
    cell = make_cell(name, INPUTS, HIDDEN).eval()
    x = torch.randn(B, T, INPUTS)
    torch.manual_seed(1)  # shm draws θ_t at random: the same draws both ways
    whole, final = cell(x, batched(cell.initial_state()))
    assert whole.shape == (B, T, HIDDEN)
    torch.manual_seed(1)
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
    cell = make_cell(name, INPUTS, HIDDEN).eval()
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
    if name == "none":
        pytest.skip("no memory")
    torch.manual_seed(0)
    cell = make_cell(name, INPUTS, HIDDEN)
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
    torch.manual_seed(5)  # shm draws θ_t at random: the same draws for the trunk run twice
    out = module.forward_train(chunk)
    assert out[Columns.ACTION_DIST_INPUTS].shape == (4, 8, 3) and out[Columns.EMBEDDINGS].shape == (4, 8, 16)
    assert module.compute_values(chunk).shape == (4, 8)
    torch.manual_seed(5)
    assert torch.allclose(module.compute_values(chunk, out[Columns.EMBEDDINGS]), module.compute_values(chunk))


def test_gtrxl_runs_a_chunk_at_once_as_stepping_does_with_gradients_through_the_chunk_only():
    """The whole-chunk form (sliding-window mask) gives the outputs of T one-step calls; in the chunk the
    gradient of the last output reaches step 0 (Transformer-XL: gradients flow within the segment) and never
    the memory carried in from before it (sg(M))."""
    torch.manual_seed(0)
    cell = make_cell("gtrxl", INPUTS, HIDDEN, {"window": 4})  # a window shorter than the chunk: entries slide out
    x = torch.randn(B, T, INPUTS)
    start = batched(cell.initial_state())
    start["memory"] = torch.randn_like(start["memory"])
    start["valid"][:] = 1
    start["valid"][:, :2] = 0  # two empty slots, two filled ones carried in
    with torch.no_grad():  # positions matter: a bias per distance that is not flat
        for block in cell.blocks:
            block.distance_bias.copy_(torch.randn_like(block.distance_bias))
        whole, _ = cell(x, start)
        state, outputs = start, []
        for t in range(T):
            y, state = cell(x[:, t : t + 1], state)
            outputs.append(y)
    assert torch.allclose(torch.cat(outputs, dim=1), whole, atol=1e-5)

    cell = make_cell("gtrxl", INPUTS, HIDDEN)  # the default window (96) holds the whole chunk
    x = torch.randn(B, T, INPUTS, requires_grad=True)
    start = batched(cell.initial_state())
    start["memory"] = torch.randn_like(start["memory"]).requires_grad_()
    start["valid"][:, -3:] = 1  # three steps carried in from the previous chunk
    y, _ = cell(x, start)
    y[:, -1].sum().backward()
    assert (x.grad[:, 0].abs().sum(-1) > 1e-6).all(), x.grad[:, 0]
    assert start["memory"].grad is None or not start["memory"].grad.any()
    # ... and the carried memory is read: changing it changes the chunk's outputs.
    with torch.no_grad():
        moved = dict(start, memory=torch.randn_like(start["memory"]))  # (not a shift: LayerNorm)
        assert not torch.allclose(cell(x, moved)[0], y)


def test_ffm_learns_decay_and_frequency_from_the_reference_initialisation():
    """proroklab/ffm: a = linspace(−0.673, ln(0.01)/1024), b = 2π/linspace(1, 1024, c), both learned, a bounded
    only by −0.683 (exp: 0.505 per step), not capped near 1."""
    import math

    cell = make_cell("ffm", INPUTS, HIDDEN, {"memory": 8, "context": 4})
    names = dict(cell.named_parameters())
    assert "a" in names and "b" in names
    assert torch.allclose(torch.exp(cell.a[[0, -1]]), torch.tensor([0.5101, 0.99551]), atol=1e-4)
    assert torch.allclose(cell.b, 2 * math.pi / torch.tensor([1.0, 342.0, 683.0, 1024.0]))
    x = torch.randn(2, T, INPUTS)
    y, _ = cell(x, {k: v.expand(2, *v.shape).clone() for k, v in cell.initial_state().items()})
    y.square().sum().backward()
    assert cell.a.grad.abs().min() > 0 and cell.b.grad.abs().min() > 0
    with torch.no_grad():  # a fast learned decay is used as learned
        cell.a.fill_(-0.6)
        cell.b.zero_()
    assert torch.allclose(cell.gamma().abs(), torch.full((8, 4), math.exp(-0.6)), atol=1e-6)
    with torch.no_grad():
        cell.a.fill_(-5.0)
    assert torch.allclose(cell.gamma().abs(), torch.full((8, 4), math.exp(-0.683147)), atol=1e-5)


@pytest.mark.parametrize("rule", ["random", "first"])
def test_shm_calibrates_its_memory_with_a_row_of_theta_drawn_by_its_rule(rule):
    """C_t = 1 + tanh(θ_t ⊗ v_c(x)) scales the memory: θ gets a gradient (it would get none with C ≡ 1), from
    one row per step at random over the table (the SHM paper) or from row 0 alone (the authors' POPGym code)."""
    torch.manual_seed(0)
    cell = make_cell("shm", INPUTS, HIDDEN, {"size": 8, "table": 16, "theta": rule})
    x = torch.randn(32, T, INPUTS)
    y, _ = cell(x, {k: v.expand(32, *v.shape).clone() for k, v in cell.initial_state().items()})
    y.square().sum().backward()
    rows = (cell.theta.grad.abs().sum(-1) > 0).nonzero().flatten().tolist()
    assert rows == ([0] if rule == "first" else list(range(16)))
    v_c = torch.randn(4, 8)
    assert not torch.allclose(cell.calibration(v_c), torch.ones(4, 8, 8))
    with pytest.raises(ValueError, match="theta"):
        make_cell("shm", INPUTS, HIDDEN, {"theta": "row0"})


def test_the_catalog_is_the_one_place_a_cells_defaults_are_written():
    """Each cell's arguments are exactly the catalog's (MEMORY_PARAMS), and none has a default of its own."""
    import inspect

    from palimpsest.rl.catalog import MEMORY_PARAMS

    assert set(MEMORIES) == set(MEMORY_PARAMS)
    for kind, cell in MEMORIES.items():
        own = [p for p in inspect.signature(cell.__init__).parameters.values() if p.name not in ("self", "inputs", "hidden")]
        assert {p.name for p in own} == set(MEMORY_PARAMS[kind]), kind
        assert all(p.default is inspect.Parameter.empty for p in own), f"{kind}: a default outside the catalog"
