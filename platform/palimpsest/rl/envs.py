"""Which Gymnasium environments the benchmark runs, and how it builds them (torch-free: the spec reads it).

Any registered id whose action space is `Discrete` and whose observations flatten to a vector:
our memory environments (`palimpsest/<Name>-v0`, registered by `import palimpsest_envs`),
Gymnasium's own (`CartPole-v1`), and POPGym's (`popgym-<Name>-v0`, registered by `import
popgym`: the optional `popgym` extra). Observations that are not a `Box` (POPGym's
`Discrete`, `MultiDiscrete` and `Tuple` ones) are flattened by Gymnasium's
`FlattenObservation` (one-hot codes). An env with a batched twin (a `vector_entry_point`)
and Box observations is stepped as one; any other as Gymnasium's `SyncVectorEnv` of single
envs (`make_vec`).
"""

from __future__ import annotations

import importlib
import inspect

import gymnasium

# Packages that register ids when imported, by the ids' prefix.
REGISTERING = {"palimpsest/": "palimpsest_envs", "popgym-": "popgym"}


class EnvError(ValueError):
    """An environment id or argument that cannot be used (the message names what is allowed)."""


def _register(env_id: str) -> None:
    importlib.import_module("palimpsest_envs")
    for prefix, package in REGISTERING.items():
        if env_id.startswith(prefix):
            try:
                importlib.import_module(package)
            except ImportError:
                raise EnvError(f"'{env_id}' needs the {package} package: pip install -e '.[{package}]'") from None


def check_id(env_id: str) -> str:
    """`env_id` if it is registered (after importing the package its prefix names), else an EnvError."""
    import difflib

    _register(env_id)
    if env_id not in gymnasium.registry:
        close = difflib.get_close_matches(env_id, list(gymnasium.registry), n=1, cutoff=0.6)
        ours = ", ".join(importlib.import_module("palimpsest_envs").ENV_IDS)
        raise EnvError(f"unknown environment '{env_id}'" + (f"; did you mean '{close[0]}'?" if close else "")
                       + f" (any registered Gymnasium id with Discrete actions and Box observations; ours: {ours})")
    return env_id


def vector_mode(env_id: str) -> str:
    """How to batch `env_id`: its own batched twin ("vector_entry_point") where it has one, else "sync"."""
    _register(env_id)
    return "vector_entry_point" if gymnasium.spec(env_id).vector_entry_point is not None else "sync"


def make(env_id: str, **params) -> gymnasium.Env:
    """`gymnasium.make(env_id, **params)`, its observations flattened to a vector when they are not a Box."""
    _register(env_id)
    env = gymnasium.make(env_id, **params)
    if not isinstance(env.observation_space, gymnasium.spaces.Box):
        env = gymnasium.wrappers.FlattenObservation(env)
    return env


def make_vec(env_id: str, num_envs: int, **params) -> gymnasium.vector.VectorEnv:
    """`num_envs` copies of `make(env_id, **params)` stepped together: the env's batched twin where it has one (and
    Box observations), else a SyncVectorEnv (NEXT_STEP autoreset either way)."""
    if vector_mode(env_id) == "vector_entry_point":
        envs = gymnasium.make_vec(env_id, num_envs=num_envs, vectorization_mode="vector_entry_point", **params)
        if isinstance(envs.single_observation_space, gymnasium.spaces.Box):
            return envs
        envs.close()
    return gymnasium.vector.SyncVectorEnv([lambda: make(env_id, **params)] * num_envs)


def max_episode_steps(env_id: str) -> int | None:
    """The step limit `gymnasium.make` puts on the env (its TimeLimit), if any."""
    return gymnasium.spec(env_id).max_episode_steps


def _entry_class(env_id: str):
    entry = gymnasium.spec(env_id).entry_point
    if isinstance(entry, str):
        module, name = entry.split(":")
        return getattr(importlib.import_module(module), name)
    return entry


def argument_names(env_id: str) -> list[str] | None:
    """The keyword arguments `gymnasium.make(env_id, ...)` passes on to the env (None: it takes any)."""
    target = _entry_class(env_id)
    signature = inspect.signature(target.__init__ if inspect.isclass(target) else target)
    parameters = [p for p in signature.parameters.values() if p.name != "self"]
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters):
        return None
    return [p.name for p in parameters if p.kind is not inspect.Parameter.VAR_POSITIONAL and p.name != "render_mode"]


def check_arguments(env_id: str, params: dict, where: str = "params") -> tuple:
    """Build the env (and its batched form) with `params`; returns (observation shape, number of actions).

    Raises:
        EnvError: an argument the env does not take ("did you mean" from its signature), one it refuses,
            or spaces the agents cannot use.
    """
    import difflib

    names = argument_names(env_id)
    if names is not None:
        for key in params:
            if key not in names:
                close = difflib.get_close_matches(key, names, n=1, cutoff=0.6)
                hint = f"; did you mean '{close[0]}'?" if close else ";"
                raise EnvError(f"{where}: {env_id} takes no '{key}'{hint} allowed: {', '.join(names) or 'nothing'}")
    try:
        env = gymnasium.make(env_id, **params)
        observation, action = env.observation_space, env.action_space
        env.close()
    except (TypeError, ValueError) as error:
        raise EnvError(f"{where}: {error}") from None
    if not isinstance(action, gymnasium.spaces.Discrete):
        raise EnvError(f"{where}: {env_id} has {type(action).__name__} actions; the agents take Discrete actions")
    try:
        flat = gymnasium.spaces.flatten_space(observation)
    except NotImplementedError:
        flat = None
    if not isinstance(flat, gymnasium.spaces.Box) or len(flat.shape) != 1:
        raise EnvError(f"{where}: {env_id} has {observation} observations, which do not flatten to a vector; the "
                       "agents read vectors (Box, Discrete, MultiDiscrete, Tuple or Dict of those)")
    try:
        make_vec(env_id, 1, **params).close()
    except (TypeError, ValueError) as error:
        raise EnvError(f"{where}: {error}") from None
    return tuple(flat.shape), int(action.n)
