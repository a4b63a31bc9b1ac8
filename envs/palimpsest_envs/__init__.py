"""Gymnasium memory environments (numpy only).

Importing this package registers, with lazy string entry points (nothing below is imported
until an environment is made):

- ``palimpsest/EndlessTMaze-v0``: ``EndlessTMaze`` / batched ``EndlessTMazeVector``
- ``palimpsest/CueRewrite-v0``: ``CueRewrite`` / batched ``CueRewriteVector``
- ``palimpsest/ColorCubes-v0``: ``ColorCubes`` / batched ``ColorCubesVector``

so ``gymnasium.make(id)`` and ``gymnasium.make_vec(id, num_envs=N,
vectorization_mode="vector_entry_point")`` both work. Only numpy and gymnasium are imported.
"""

from __future__ import annotations

import importlib
from typing import Any

import gymnasium

_ENVS = {
    "palimpsest/EndlessTMaze-v0": (
        "palimpsest_envs.tmaze:EndlessTMaze",
        "palimpsest_envs.tmaze_vector:EndlessTMazeVector",
    ),
    "palimpsest/CueRewrite-v0": (
        "palimpsest_envs.cue_rewrite:CueRewrite",
        "palimpsest_envs.cue_rewrite_vector:CueRewriteVector",
    ),
    "palimpsest/ColorCubes-v0": (
        "palimpsest_envs.color_cubes:ColorCubes",
        "palimpsest_envs.color_cubes_vector:ColorCubesVector",
    ),
}
ENV_IDS = tuple(_ENVS)

for _env_id, (_entry, _vector_entry) in _ENVS.items():
    # Re-importing (e.g. importlib.reload) must not re-register: gymnasium warns on overrides.
    if _env_id not in gymnasium.registry:
        gymnasium.register(id=_env_id, entry_point=_entry, vector_entry_point=_vector_entry)

del _env_id, _entry, _vector_entry

_CLASSES = {
    entry.rsplit(":", 1)[1]: entry for pair in _ENVS.values() for entry in pair
}
__all__ = ["ENV_IDS", *_CLASSES]


def __getattr__(name: str) -> Any:
    # Lazy class access (PEP 562) keeps `import palimpsest_envs` to registration only.
    if name in _CLASSES:
        module, cls = _CLASSES[name].split(":")
        return getattr(importlib.import_module(module), cls)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
