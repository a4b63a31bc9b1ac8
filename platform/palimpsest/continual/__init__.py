"""Continual-learning methods, one small file each, registered by name.

    @register("replay")
    class Replay(ContinualMethod): ...

`make_method(name, **params)` builds one; `METHODS` lists them.
"""

from __future__ import annotations

import importlib

from palimpsest.catalog import CONTINUAL_METHODS
from palimpsest.continual.base import ContinualMethod, LoopState

METHODS: dict[str, type[ContinualMethod]] = {}

# name -> module (kept in catalog.py so the spec can list names without importing torch)
METHOD_MODULES = CONTINUAL_METHODS


def register(name: str):
    """Class decorator: register a method under `name` (duplicates are refused)."""

    def wrap(cls):
        if name in METHODS and METHODS[name] is not cls:
            raise ValueError(f"continual method '{name}' is already registered by {METHODS[name].__name__}")
        cls.name = name
        METHODS[name] = cls
        return cls

    return wrap


def method_class(name: str) -> type[ContinualMethod]:
    """The class registered under `name` (imports its module on first use)."""
    if name not in METHOD_MODULES:
        raise KeyError(f"unknown continual method '{name}'; allowed: {', '.join(METHOD_MODULES)}")
    importlib.import_module(f"palimpsest.continual.{METHOD_MODULES[name]}")
    return METHODS[name]


def make_method(name: str, **params) -> ContinualMethod:
    return method_class(name)(**params)


__all__ = ["ContinualMethod", "LoopState", "METHODS", "METHOD_MODULES", "make_method", "method_class", "register"]
