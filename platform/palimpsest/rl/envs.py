"""Which Gymnasium environments the benchmark runs, and how it builds them (torch-free: the spec reads it).

Any registered id whose action space is `Discrete` and whose observation space is a `Box`:
our memory environments (`palimpsest/<Name>-v0`, registered by `import palimpsest_envs`),
Gymnasium's own (`CartPole-v1`), and POPGym's (`popgym-<Name>-v0`, registered by `import
popgym`: the optional `popgym` extra). An env with a batched twin (a `vector_entry_point`)
is stepped as one; any other as Gymnasium's `SyncVectorEnv` of single envs.
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
        gymnasium.make_vec(env_id, num_envs=1, vectorization_mode=vector_mode(env_id), **params).close()
    except (TypeError, ValueError) as error:
        raise EnvError(f"{where}: {error}") from None
    if not isinstance(action, gymnasium.spaces.Discrete):
        raise EnvError(f"{where}: {env_id} has {type(action).__name__} actions; the agents take Discrete actions")
    if not isinstance(observation, gymnasium.spaces.Box):
        raise EnvError(f"{where}: {env_id} has {type(observation).__name__} observations; the agents read Box "
                       "observations (wrap it, e.g. gymnasium.wrappers.FlattenObservation, and register the wrapper)")
    return tuple(observation.shape), int(action.n)
