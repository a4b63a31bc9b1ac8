"""Shared fixtures: one local Ray session for the whole test session (a Ray start costs ~10 s)."""

from __future__ import annotations

import os

import pytest


@pytest.fixture(scope="session")
def ray_session():
    import ray

    from palimpsest.runtime import init_ray

    os.environ.pop("RAY_ADDRESS", None)
    init_ray()
    yield ray
    ray.shutdown()
