"""Which test is running, for helpers that start a Ray cluster of their own (tests/cluster_nodes.py,
tests/interrupting.py): they refuse to run in a test without the `cluster` marker, so `-m "not cluster"`
(make test-fast) leaves out every test that starts one. Set by tests/conftest.py before each test's fixtures."""

from __future__ import annotations

current = None  # the pytest item being set up or run


def require_cluster_marker(what: str) -> None:
    if current is not None and current.get_closest_marker("cluster") is None:
        raise AssertionError(f"{current.nodeid} starts {what}: mark it @pytest.mark.cluster (pyproject.toml)")
