"""platform/ and envs/ are source roots: `import platform` must stay the standard library's."""

from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
STDLIB = Path(sysconfig.get_paths()["stdlib"]).resolve()


def test_source_roots_hold_no_init_file():
    assert not (REPO / "platform" / "__init__.py").exists()
    assert not (REPO / "envs" / "__init__.py").exists()


def test_import_platform_from_repo_root_is_stdlib():
    code = "import platform, palimpsest; print(platform.__file__); print(platform.python_version())"
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60,
                          env={**os.environ, "PYTHONPATH": str(REPO)})
    assert proc.returncode == 0, proc.stderr
    assert Path(proc.stdout.splitlines()[0]).resolve().parent == STDLIB


@pytest.mark.integration
def test_import_platform_inside_ray_worker_with_repo_working_dir_is_stdlib(ray_session):
    @ray_session.remote
    def probe():
        import platform

        return os.getcwd(), platform.__file__, platform.system(), sys.path[:3]

    runtime_env = {"working_dir": str(REPO),
                   "excludes": [".venv/", "runs/", ".git/", "**/__pycache__/", ".pytest_cache/", ".hypothesis/"]}
    cwd, platform_file, system, path_head = ray_session.get(probe.options(runtime_env=runtime_env).remote(), timeout=300)
    # The worker really runs in (a copy of) the repo, which is on its sys.path ...
    assert (Path(cwd) / "platform" / "palimpsest").is_dir()
    # ... and still gets the standard library module.
    assert Path(platform_file).resolve().parent == STDLIB
    assert system == "Linux"
