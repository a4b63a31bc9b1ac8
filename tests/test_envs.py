"""Memory-rewriting RL environments (palimpsest_envs): API, seeding, batched twins, policies."""

from __future__ import annotations

import pickle
import subprocess
import sys
import warnings

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

import palimpsest_envs
from palimpsest_envs.color_cubes import DOWN, LEFT, MODES, PICK, RIGHT, UP, ColorCubes, make_config

TMAZE, CUE, CUBES = "palimpsest/EndlessTMaze-v0", "palimpsest/CueRewrite-v0", "palimpsest/ColorCubes-v0"
ENV_IDS = sorted(k for k in gym.registry if k.startswith("palimpsest/"))

# Configurations for the twin comparison: defaults, a short maze that truncates often,
# uniform lengths with the junction signal, several rewrites, every ColorCubes mode, a
# crowded grid (teleports onto few free cells) and budgets short enough to truncate.
CONFIGS = [
    (TMAZE, {}),
    (TMAZE, {"num_corridors": 2, "corridor_length": 1}),
    (TMAZE, {"num_corridors": 3, "length_mode": "uniform", "min_length": 1, "max_length": 4, "junction_signal": True}),
    (TMAZE, {"num_corridors": 1}),
    (CUE, {}),
    (CUE, {"num_cues": 3, "num_rewrites": 3, "delay": 5}),
    (CUE, {"num_cues": 2, "num_rewrites": 0, "delay": 1}),
    (CUBES, {}),
    (CUBES, {"mode": "extreme"}),
    (CUBES, {"mode": "trivial", "max_steps": 8}),
    (CUBES, {"grid_size": 3, "num_cubes": 5, "teleports_per_phase": 4, "max_steps": 14}),
]


def test_registered_ids():
    assert ENV_IDS == sorted(palimpsest_envs.ENV_IDS) == sorted([TMAZE, CUE, CUBES])
    import importlib

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # gymnasium warns when overriding an id
        importlib.reload(palimpsest_envs)
    assert palimpsest_envs.EndlessTMaze is gym.make(TMAZE).unwrapped.__class__
    assert palimpsest_envs.ColorCubes is gym.make(CUBES).unwrapped.__class__
    venv = gym.make_vec(CUBES, num_envs=2, vectorization_mode="vector_entry_point")
    assert palimpsest_envs.ColorCubesVector is venv.unwrapped.__class__


def test_imports_only_numpy_and_gymnasium():
    code = (
        "import sys, palimpsest_envs, gymnasium as gym\n"
        "for i in palimpsest_envs.ENV_IDS:\n"
        "    gym.make(i); gym.make_vec(i, num_envs=2, vectorization_mode='vector_entry_point')\n"
        "bad = [m for m in ('torch', 'ray', 'palimpsest') if m in sys.modules]\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.parametrize("env_id", ENV_IDS)
def test_check_env(env_id):
    env = gym.make(env_id)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        check_env(env.unwrapped)
    assert not [str(w.message) for w in caught]


@pytest.mark.parametrize("env_id", ENV_IDS)
def test_make_vec(env_id):
    venv = gym.make_vec(env_id, num_envs=3, vectorization_mode="vector_entry_point")
    single = gym.make(env_id)
    assert venv.num_envs == 3
    assert venv.metadata["autoreset_mode"] == gym.vector.AutoresetMode.NEXT_STEP
    assert venv.single_observation_space == single.observation_space
    assert venv.single_action_space == single.action_space
    obs, _ = venv.reset(seed=0)
    assert obs in venv.observation_space


def _rollout(env, seed, n_steps, action_seed):
    """Trajectory of a single env under seeded random actions, resetting (unseeded) at episode ends."""
    env.action_space.seed(action_seed)
    traj = [env.reset(seed=seed)[0]]
    for _ in range(n_steps):
        obs, r, term, trunc, info = env.step(env.action_space.sample())
        traj.append((obs, r, term, trunc, info))
        if term or trunc:
            traj.append(env.reset()[0])
    return traj


def _same(a, b):
    return all(gym.utils.env_checker.data_equivalence(x, y, exact=True) for x, y in zip(a, b, strict=True))


@pytest.mark.parametrize("env_id", ENV_IDS)
def test_seeded_determinism(env_id):
    a = _rollout(gym.make(env_id), seed=7, n_steps=300, action_seed=3)
    b = _rollout(gym.make(env_id), seed=7, n_steps=300, action_seed=3)
    c = _rollout(gym.make(env_id), seed=8, n_steps=300, action_seed=3)
    assert _same(a, b)
    assert not _same(a, c)


@pytest.mark.parametrize("env_id", ENV_IDS)
def test_pickle_mid_episode(env_id):
    env = gym.make(env_id).unwrapped
    env.reset(seed=11)
    env.action_space.seed(0)
    for _ in range(3):
        env.step(env.action_space.sample())
    clone = pickle.loads(pickle.dumps(env))
    rng = np.random.default_rng(5)
    for _ in range(200):  # continues through several episodes (unseeded resets)
        a = rng.integers(env.action_space.n)
        out, out_clone = env.step(a), clone.step(a)
        assert _same(out, out_clone)
        if out[2] or out[3]:
            assert _same(env.reset(), clone.reset())


# ---- policies on batched observations --------------------------------------------------


class Policy:
    """Batched policy with a per-sub-env memory slot; `kind` is oracle / first / random."""

    def __init__(self, env_id, venv, kind, seed=0):
        self.env_id, self.kind, self.n = env_id, kind, venv.num_envs
        self.cfg = venv.unwrapped.config
        self.rng = np.random.default_rng(seed)
        self.memory = np.zeros(self.n, dtype=np.int64)
        if env_id == CUBES:
            self.cube_map = np.zeros((self.n, self.cfg.num_cubes), dtype=np.int64)  # remembered cell per colour

    def cue_seen(self, obs):
        """(mask, value) of the cue shown in each observation row."""
        if self.env_id == TMAZE:
            return obs[:, 1] + obs[:, 2] > 0, (obs[:, 2] > 0).astype(np.int64)
        k = self.cfg.num_cues
        return obs[:, k] > 0, obs[:, :k].argmax(axis=1)

    def act(self, obs, fresh):
        if self.env_id == CUBES:
            return self.fetch(obs, fresh)
        shown, value = self.cue_seen(obs)
        update = shown if self.kind == "oracle" else fresh  # "first" keeps the episode's first cue
        self.memory[update] = value[update]
        if self.env_id == CUE:
            if self.kind == "random":
                return self.rng.integers(0, self.cfg.num_cues, self.n)
            return self.memory.copy()
        at_junction = obs[:, 3] > 0 if self.cfg.junction_signal else obs[:, 0] == 1.0
        turn = self.rng.integers(0, 2, self.n) if self.kind == "random" else self.memory
        return np.where(at_junction, 1 + turn, 0)

    def fetch(self, obs, fresh):
        """ColorCubes: walk to the remembered cell of the target colour and pick.

        oracle rewrites its map with every cube shown; first keeps the episode's first view
        (but reads each new target colour); random keeps oracle's map but does not remember
        the target: it guesses a colour whenever one is shown.
        """
        agent, target_shown, target, shown, cells = _cube_view(obs, self.cfg)
        update = shown & fresh[:, None] if self.kind == "first" else shown
        self.cube_map[update] = cells[update]
        if self.kind == "random":
            self.memory[target_shown] = self.rng.integers(0, self.cfg.num_cubes, target_shown.sum())
        else:
            self.memory[target_shown] = target[target_shown]
        return _walk_and_pick(agent, self.cube_map[np.arange(self.n), self.memory], self.cfg.grid_size)


def _cube_view(obs, cfg):
    """ColorCubes observations as (agent cell, target shown, target, cube shown (n, N), cube cells (n, N))."""
    g, n = cfg.grid_size, cfg.num_cubes

    def cell(row_col):
        return (np.rint(row_col[..., 0] * (g - 1)) * g + np.rint(row_col[..., 1] * (g - 1))).astype(np.int64)

    target, view = obs[:, 2 : 2 + n], obs[:, 2 + n :].reshape(len(obs), n, 3)
    return cell(obs[:, :2]), target.max(axis=1) > 0, target.argmax(axis=1), view[..., 0] > 0, cell(view[..., 1:])


def _walk_and_pick(agent, goal, grid_size):
    """Straight to `goal` (rows first), then pick."""
    (row, col), (goal_row, goal_col) = np.divmod(agent, grid_size), np.divmod(goal, grid_size)
    return np.select([goal_row < row, goal_row > row, goal_col < col, goal_col > col], [UP, DOWN, LEFT, RIGHT], PICK)


def _first_episodes(env_id, kind, num_envs, seed=0, **kwargs):
    """Success of each sub-env's first episode, and whether every cue in it equalled the first / the latest did."""
    venv = gym.make_vec(env_id, num_envs=num_envs, vectorization_mode="vector_entry_point", **kwargs)
    policy = Policy(env_id, venv, kind, seed)
    obs, _ = venv.reset(seed=seed)
    fresh = np.ones(num_envs, dtype=bool)
    first_cue = np.zeros(num_envs, dtype=np.int64)
    last_cue = np.zeros(num_envs, dtype=np.int64)
    all_same = np.ones(num_envs, dtype=bool)
    success = np.full(num_envs, np.nan)
    while np.isnan(success).any():
        actions = policy.act(obs, fresh)
        shown, value = policy.cue_seen(obs)
        todo = np.isnan(success)
        first_cue[fresh & todo] = value[fresh & todo]
        last_cue[shown & todo] = value[shown & todo]
        all_same &= ~(todo & shown) | (value == first_cue)
        obs, _, term, trunc, info = venv.step(actions)
        fresh = term | trunc
        if "success" in info:
            done = info["_success"] & todo
            success[done] = info["success"][done]
    return success, all_same, last_cue == first_cue


@pytest.mark.parametrize(
    "env_id, kwargs",
    [
        (TMAZE, {}),
        (TMAZE, {"num_corridors": 1}),
        (TMAZE, {"num_corridors": 3, "length_mode": "uniform", "max_length": 6, "junction_signal": True}),
        (CUE, {}),
        (CUE, {"num_cues": 8, "num_rewrites": 4, "delay": 12}),
    ],
)
def test_oracle_always_succeeds(env_id, kwargs):
    success, _, _ = _first_episodes(env_id, "oracle", 500, **kwargs)
    assert success.mean() == 1.0


def test_oracle_single_env():
    for env_id in ENV_IDS:
        env = gym.make(env_id)
        memory, obs = 0, env.reset(seed=1)[0]
        cube_map = np.zeros(MODES["medium"]["num_cubes"], dtype=np.int64)  # ColorCubes: cell per colour
        for _ in range(20):
            done = False
            while not done:
                if env_id == TMAZE:
                    memory = 1 if obs[2] else 0 if obs[1] else memory
                    a = 1 + memory if obs[0] == 1.0 else 0
                elif env_id == CUBES:
                    cfg = env.unwrapped.config
                    agent, target_shown, target, shown, cells = _cube_view(obs[None], cfg)
                    cube_map[shown[0]] = cells[0][shown[0]]
                    memory = int(target[0]) if target_shown[0] else memory
                    a = int(_walk_and_pick(agent, cube_map[[memory]], cfg.grid_size)[0])
                else:
                    memory = int(obs[:-2].argmax()) if obs[-2] else memory
                    a = memory
                obs, _, term, trunc, info = env.step(a)
                done = term or trunc
            assert info["success"] == 1.0
            obs = env.reset()[0]


def test_tmaze_first_cue_fails_after_a_rewrite():
    success, all_same, _ = _first_episodes(TMAZE, "first", 1000, num_corridors=3)
    # Remembering the first cue passes exactly the episodes whose later cues never differ.
    assert np.array_equal(success == 1.0, all_same)
    assert 0.15 < success.mean() < 0.35  # P(all three equal) = 1/4
    single, _, _ = _first_episodes(TMAZE, "first", 200, num_corridors=1)
    assert single.mean() == 1.0  # no rewrite: the first cue is the last one


@pytest.mark.parametrize("num_rewrites", [1, 3])
def test_cue_first_cue_fails_after_a_rewrite(num_rewrites):
    success, _, latest_is_first = _first_episodes(CUE, "first", 1000, num_rewrites=num_rewrites)
    assert np.array_equal(success == 1.0, latest_is_first)
    if num_rewrites == 1:
        assert success.max() == 0.0  # a rewrite always changes the value


def test_memoryless_policies_at_chance():
    tmaze, _, _ = _first_episodes(TMAZE, "random", 2000, num_corridors=1)
    assert abs(tmaze.mean() - 0.5) < 0.05
    cue, _, _ = _first_episodes(CUE, "random", 2000, num_cues=4)
    assert abs(cue.mean() - 0.25) < 0.05
    # ColorCubes without the target colour: a guessed cube is the target 1 time in num_cubes.
    for kwargs, p in [({"num_cubes": 4, "num_phases": 1}, 1 / 4), ({"mode": "extreme", "num_phases": 1}, 1 / 5)]:
        cubes, _ = _cube_episodes("random", 2000, **kwargs)
        assert abs(cubes.mean() - p) < 4 * np.sqrt(p * (1 - p) / 2000), kwargs


def _cube_episodes(kind, num_envs, seed=0, **kwargs):
    """Success of each sub-env's first ColorCubes episode, and whether each phase's target was on its step-0 cell.

    Checks the rules on the way, from the observations alone: cubes hold distinct cells, a
    moved cube never lands on the agent, the target stays put during its phase, a phase
    start shows its target and the picked cube only, a teleport shows every cube and the
    target ("medium") or the moved cube alone ("extreme"), and other steps show nothing.
    """
    venv = gym.make_vec(CUBES, num_envs=num_envs, vectorization_mode="vector_entry_point", **kwargs)
    cfg = venv.unwrapped.config
    policy = Policy(CUBES, venv, kind, seed)
    rows = np.arange(num_envs)
    obs, _ = venv.reset(seed=seed)
    fresh, phase_start = np.ones(num_envs, dtype=bool), np.ones(num_envs, dtype=bool)
    truth = np.zeros((num_envs, cfg.num_cubes), dtype=np.int64)  # every cube shown so far: the true map
    first = np.zeros_like(truth)
    target, target_cell = np.zeros(num_envs, dtype=np.int64), np.zeros(num_envs, dtype=np.int64)
    unmoved = np.ones(num_envs, dtype=bool)
    success = np.full(num_envs, np.nan)
    while np.isnan(success).any():
        todo = np.isnan(success)  # still in its first episode: the rows checked
        agent, target_shown, shown_target, shown, cells = _cube_view(obs, cfg)
        moved = shown & (cells != truth) & ~fresh[:, None]
        assert not np.any(moved[todo] & (cells == agent[:, None])[todo])
        later, counts = todo & ~fresh, shown.sum(axis=1)
        assert np.all(counts[later & phase_start] == 1)  # a pick shows the picked cube only
        event = later & ~phase_start & (counts > 0)
        assert np.all(counts[event] == (1 if cfg.one_mover else cfg.num_cubes))
        # Between phase starts the target colour is shown only by a "medium" teleport.
        assert np.array_equal(target_shown[later & ~phase_start], (event & ~cfg.one_mover)[later & ~phase_start])
        truth[shown] = cells[shown]
        first[fresh] = truth[fresh]
        ordered = np.sort(truth[todo], axis=1)
        assert np.all(ordered[:, 1:] != ordered[:, :-1])
        assert target_shown[todo & phase_start].all()
        target[phase_start] = shown_target[phase_start]
        assert np.all((phase_start | (truth[rows, target] == target_cell))[todo])
        target_cell = truth[rows, target]
        unmoved &= ~(todo & phase_start) | (target_cell == first[rows, target])
        obs, reward, term, trunc, info = venv.step(policy.act(obs, fresh))
        fresh = term | trunc
        phase_start = reward == cfg.goal_reward
        if "success" in info:
            done = info["_success"] & todo
            success[done] = info["success"][done]
    return success, unmoved


@pytest.mark.parametrize("mode", ["trivial", "medium", "extreme"])
def test_cubes_oracle_always_succeeds(mode):
    success, _ = _cube_episodes("oracle", 300, mode=mode)
    assert success.mean() == 1.0


@pytest.mark.parametrize("mode", ["medium", "extreme"])
def test_cubes_first_view_fails_exactly_when_a_target_moved(mode):
    # Keeping the step-0 map passes exactly the episodes where every phase's target was still
    # on its step-0 cell when its phase began (a moved target is never found again).
    success, unmoved = _cube_episodes("first", 1000, mode=mode)
    assert np.array_equal(success == 1.0, unmoved)
    assert success.mean() < 0.2  # teleports usually move a later target first
    if mode == "medium":
        assert success.max() == 1.0  # both sides of the rule occur
    trivial, _ = _cube_episodes("first", 200, mode="trivial")
    assert trivial.mean() == 1.0  # one cube, nothing moves: retention is enough


def test_cubes_modes_set_defaults_that_arguments_override():
    assert make_config("extreme") == make_config(
        "medium", grid_size=7, num_cubes=5, num_phases=5, teleports_per_phase=3
    )._replace(mode="extreme")
    cfg = make_config("trivial", num_cubes=3, num_phases=2)
    assert (cfg.grid_size, cfg.num_cubes, cfg.num_phases, cfg.teleports_per_phase) == (5, 3, 2, 0)
    assert cfg.max_steps == 4 * 2 * (2 * 5 - 1) and make_config(max_steps=7).max_steps == 7
    for mode, defaults in MODES.items():  # the docstring's table says what MODES does
        row = f'| "{mode}"'.ljust(12) + "|" + "|".join(f" {v}".ljust(len(k) + 2) for k, v in defaults.items()) + "|"
        assert row in ColorCubes.__doc__, row


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"mode": "hard"}, "mode must be one of"),
        ({"grid_size": 1}, "grid_size must be in"),
        ({"num_cubes": 0}, "num_cubes must be in"),
        ({"grid_size": 2, "num_cubes": 3}, "num_cubes must be <= grid_size"),
        ({"num_phases": 0}, "num_phases must be >= 1"),
        ({"grid_size": 3, "teleports_per_phase": 5}, "teleports_per_phase must be in"),
        ({"max_steps": 0}, "max_steps must be >= 1"),
    ],
)
def test_cubes_rejects_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        gym.make(CUBES, **kwargs)


def test_cubes_teleport_destination_is_the_chosen_free_cell():
    from palimpsest_envs.color_cubes import choose_free_cells

    rng = np.random.default_rng(0)
    cells = rng.integers(0, 9, size=(4, 500))  # duplicates included: the agent on a cube
    draws = rng.integers(0, 2**16, size=500).astype(np.uint16)
    for i, chosen in enumerate(choose_free_cells(cells, draws, 9)):
        free = sorted(set(range(9)) - set(cells[:, i]))
        assert chosen == free[int(draws[i]) * len(free) // 2**16]


# ---- the batched twins -------------------------------------------------------------------


@pytest.mark.parametrize("env_id, kwargs", CONFIGS)
def test_vector_twin_matches_single_envs(env_id, kwargs):
    n, seed = 4, 123
    venv = gym.make_vec(env_id, num_envs=n, vectorization_mode="vector_entry_point", **kwargs)
    singles = [gym.make(env_id, **kwargs).unwrapped for _ in range(n)]
    policy = Policy(env_id, venv, "oracle")
    rng = np.random.default_rng(0)
    # The short maze dawdles (turns inside corridors) often enough to hit its step budget.
    dawdle = kwargs.get("corridor_length") == 1
    noise_p = 0.9 if dawdle else 0.15
    obs, _ = venv.reset(seed=seed)
    for i, env in enumerate(singles):
        assert np.array_equal(env.reset(seed=seed + i)[0], obs[i])
    fresh, ended = np.ones(n, dtype=bool), np.zeros(n, dtype=bool)
    seen = {"success": 0, "failure": 0, "truncated": 0, "episodes": 0}
    for _ in range(400):
        # A noisy oracle: long episodes with successes, failures and (short maze) truncations.
        noise = rng.integers(int(dawdle), venv.single_action_space.n, n)
        actions = np.where(rng.random(n) < noise_p, noise, policy.act(obs, fresh))
        obs, rew, term, trunc, info = venv.step(actions)
        for i, env in enumerate(singles):
            if ended[i]:  # NEXT_STEP autoreset: the action is ignored
                expected = (env.reset()[0], 0.0, False, False, {})
            else:
                expected = env.step(int(actions[i]))
            assert np.array_equal(expected[0], obs[i])
            assert (expected[1], expected[2], expected[3]) == (rew[i], term[i], trunc[i])
            if expected[2] or expected[3]:
                assert info["_success"][i] and info["success"][i] == expected[4]["success"]
                for key in ("stages_passed", "stages"):  # corridors / phases (CueRewrite has none)
                    assert (key in expected[4]) == (key in info)
                    if key in info:
                        assert info["_" + key][i] and info[key][i] == expected[4][key]
                seen["episodes"] += 1
                seen["truncated"] += expected[3]
                seen["success" if expected[4]["success"] else "failure"] += 1
            else:
                assert "_success" not in info or not info["_success"][i]
        ended = fresh = term | trunc
    assert seen["episodes"] >= 8 and seen["success"] > 0 and seen["failure"] > 0
    if dawdle or "max_steps" in kwargs:
        assert seen["truncated"] > 0


def test_vector_reseed_and_seed_list():
    venv = gym.make_vec(TMAZE, num_envs=3, vectorization_mode="vector_entry_point")
    a = venv.reset(seed=5)[0]
    b = venv.reset(seed=[5, 6, 7])[0]
    c = venv.reset(seed=[7, None, 5])[0]
    assert np.array_equal(a, b) and np.array_equal(c[0], a[2]) and np.array_equal(c[2], a[0])
    with pytest.raises(ValueError):
        venv.reset(seed=[1, 2])


def test_palimpsest_envs_lists_every_environment_with_its_defaults():
    from typer.testing import CliRunner

    from palimpsest.cli import app

    result = CliRunner().invoke(app, ["envs"], terminal_width=240)
    assert result.exit_code == 0, result.output
    for env_id in palimpsest_envs.ENV_IDS:
        assert env_id in result.output
    assert "num_corridors=5" in result.output and "num_rewrites=1" in result.output
    assert "mode='medium'" in result.output


def test_throughput_measures_every_twin_against_the_single_env():
    """`palimpsest envs --throughput` (a measurement, printed, never asserted against a time): every env is
    measured at each batch size, and a batch of N steps counts N environment steps."""
    from palimpsest.rl.throughput import throughput, vector_rate

    rows = throughput(batches=(4, 64), batch_steps=5, single_steps=50)
    assert [row["env"] for row in rows] == list(palimpsest_envs.ENV_IDS)
    for row in rows:
        assert all(row[key] > 0 for key in ("single", 4, 64)), row
    # Steps are counted per sub-env: 64 sub-envs step far more often per second than one.
    assert vector_rate(CUE, 256, 20) > 8 * vector_rate(CUE, 1, 20)


# ---- the rules a broken env would pass otherwise ----------------------------------------------


def _oracle_walk(num_envs, steps, **kwargs):
    """Observations (steps, num_envs, 4) and the x each sub-env stood on, under the oracle with a junction signal."""
    venv = gym.make_vec(TMAZE, num_envs=num_envs, vectorization_mode="vector_entry_point", junction_signal=True,
                        **kwargs)
    policy = Policy(TMAZE, venv, "oracle")
    obs, _ = venv.reset(seed=7)
    fresh = np.ones(num_envs, dtype=bool)
    seen = []
    for _ in range(steps):
        seen.append(obs)
        obs, _, term, trunc, _ = venv.step(policy.act(obs, fresh))
        fresh = term | trunc
    return np.stack(seen)


@pytest.mark.parametrize("twin", ["single", "vector"])
def test_tmaze_shows_the_cue_on_the_first_cell_of_each_corridor_only(twin):
    """A cue visible beyond x = 0 makes every T-maze memoryless; the oracle walks several corridors of each
    episode, so later corridors' starts and every corridor cell are seen."""
    kwargs = {"num_corridors": 3, "length_mode": "uniform", "min_length": 1, "max_length": 4}
    if twin == "vector":
        obs = _oracle_walk(64, 60, **kwargs).reshape(-1, 4)
    else:
        env, policy, rows = gym.make(TMAZE, junction_signal=True, **kwargs), None, []
        venv = gym.make_vec(TMAZE, num_envs=1, vectorization_mode="vector_entry_point", junction_signal=True, **kwargs)
        policy = Policy(TMAZE, venv, "oracle")
        o, _ = env.reset(seed=3)
        fresh = np.ones(1, dtype=bool)
        for _ in range(400):
            rows.append(o)
            o, _, term, trunc, _ = env.step(int(policy.act(o[None], fresh)[0]))
            fresh = np.array([term or trunc])
            if term or trunc:
                o, _ = env.reset()
        obs = np.stack(rows)
    at_start = obs[:, 0] == 0
    cue = obs[:, 1] + obs[:, 2]
    assert at_start.sum() > 50 and (~at_start).sum() > 50
    assert np.all(cue[at_start] == 1.0)  # exactly one of left/right at x = 0
    assert np.all(cue[~at_start] == 0.0)


@pytest.mark.parametrize("low, high", [(1, 4), (3, 7)])
def test_tmaze_uniform_lengths_are_uniform_over_both_ends(low, high):
    """Corridor lengths measured by walking them (steps from x = 0 to the junction signal) take every value of
    min_length..max_length, ends included, equally often (a chi-square test; `integers(min, max)` never draws
    max_length)."""
    from scipy.stats import chisquare

    obs = _oracle_walk(2000, 2 * high + 3, num_corridors=1, length_mode="uniform", min_length=low, max_length=high)
    first_junction = obs[:, :, 3].argmax(axis=0)  # the step of each sub-env's first junction: its length
    assert obs[first_junction, np.arange(2000), 3].all()
    counts = np.bincount(first_junction, minlength=high + 1)[low:]
    assert counts.sum() == 2000 and counts.min() > 0, counts
    assert chisquare(counts).pvalue > 1e-4, counts


def _entry(entry_point: str):
    import importlib

    module, name = entry_point.split(":")
    return getattr(importlib.import_module(module), name)


@pytest.mark.parametrize("env_id", ENV_IDS)
def test_argument_defaults_are_the_declared_ones(env_id):
    """Each env's argument defaults are declared once (`DEFAULTS` in its module): the single env's, the
    batched twin's and make_config's signatures have exactly those arguments, in that order, with those defaults
    (repr: 1 and 1.0 differ)."""
    import inspect

    spec = gym.spec(env_id)
    single, vector = _entry(spec.entry_point), _entry(spec.vector_entry_point)
    module = sys.modules[single.__module__]
    declared = [(name, repr(value)) for name, value in module.DEFAULTS.items()]

    def defaults(fn):
        return [(p.name, repr(p.default)) for p in inspect.signature(fn).parameters.values()
                if p.name not in ("self", "num_envs", "render_mode")]

    assert defaults(single.__init__) == declared
    assert defaults(vector.__init__) == declared
    assert defaults(module.make_config) == declared


def test_rllib_bench_default_env_params_are_cue_rewrites_defaults():
    from palimpsest.spec.bench import RLlibBench
    from palimpsest_envs import cue_rewrite

    bench = RLlibBench(type="rllib")
    assert bench.env == CUE and bench.env_params == dict(cue_rewrite.DEFAULTS)
