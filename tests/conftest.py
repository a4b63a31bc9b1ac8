"""Shared fixtures: one local Ray session for the whole test session (a Ray start costs ~10 s)."""

from __future__ import annotations

import os

import pytest

import tiers
from object_store import CREDENTIALS, ObjectStore

# Before the shared Ray session starts, so its workers can open the test bucket too
# (tests/object_store.py; nothing here reaches a real cloud).
for _name, _value in CREDENTIALS.items():
    os.environ.setdefault(_name, _value)


def pytest_collection_modifyitems(config, items):
    """Every test on the shared Ray session carries the `integration` marker (make test-fast leaves them out)."""
    unmarked = [item.nodeid for item in items
                if "ray_session" in item.fixturenames and item.get_closest_marker("integration") is None]
    if unmarked:
        raise pytest.UsageError("tests on the shared Ray session without @pytest.mark.integration: "
                                + ", ".join(unmarked))


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item):
    tiers.current = item


@pytest.fixture(scope="session")
def ray_session():
    import ray

    from palimpsest.ray_connection import init_ray

    os.environ.pop("RAY_ADDRESS", None)
    init_ray()
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def unlearn_cache(tmp_path_factory):
    """One model cache for the session's small unlearn jobs (tests/test_unlearn_job.py, tests/test_tune.py): the
    cache is content-addressed, so jobs with the same target recipe reuse its pre-trained base, target and retain
    models instead of training them again. (A test that asserts on a retraining timed in its own job keeps a
    cache of its own.)"""
    return tmp_path_factory.mktemp("unlearn-cache")


@pytest.fixture(scope="session")
def object_store(tmp_path_factory):
    """An S3-compatible server on this machine (moto), one for the test session."""
    server = ObjectStore(tmp_path_factory.mktemp("s3") / "server.log")
    yield server
    server.stop()
