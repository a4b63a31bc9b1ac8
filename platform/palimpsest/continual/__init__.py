"""Continual-learning methods, one small file each, registered by name.

    @register("replay")
    class Replay(ContinualMethod): ...

`make_method(name, **params)` builds one; `METHODS` lists them.
"""

from __future__ import annotations

import importlib

from palimpsest.continual.base import ContinualMethod, LoopState

METHODS: dict[str, type[ContinualMethod]] = {}

# name -> module, so the spec can list the names without importing torch.
METHOD_MODULES = {
    "naive": "naive",
    "joint": "joint",
    "replay": "replay",
    "ewc": "ewc",
    "l2": "l2",
    "lwf": "lwf",
    "gere": "gere",
    "lora": "lora",
    "kappatune": "kappatune",
    "fpf": "fpf",
}


def register(name: str):
    """Class decorator: register a method under `name` (duplicates are refused)."""

    def wrap(cls):
        if name in METHODS and METHODS[name] is not cls:
            raise ValueError(f"continual method '{name}' is already registered by {METHODS[name].__name__}")
        cls.name = name
        METHODS[name] = cls
        return cls

    return wrap


def make_method(name: str, **params) -> ContinualMethod:
    if name not in METHOD_MODULES:
        raise KeyError(f"unknown continual method '{name}'; allowed: {', '.join(METHOD_MODULES)}")
    importlib.import_module(f"palimpsest.continual.{METHOD_MODULES[name]}")
    return METHODS[name](**params)


__all__ = ["ContinualMethod", "LoopState", "METHODS", "METHOD_MODULES", "make_method", "register"]
