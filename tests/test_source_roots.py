"""platform/ and envs/ are source roots: `import platform` must stay the standard library's."""

from __future__ import annotations

import json
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


PROBE = """
import json, os, sys, ray
ray.init(address="local", num_cpus=1, include_dashboard=False, logging_level="ERROR",
         runtime_env={"working_dir": sys.argv[1],
                      "excludes": [".venv/", "runs/", ".git/", "**/__pycache__/", ".pytest_cache/", ".hypothesis/"]})

@ray.remote
def probe():
    import platform
    return {"cwd": os.getcwd(), "platform": platform.__file__, "system": platform.system()}

print("RESULT " + json.dumps(ray.get(probe.remote(), timeout=300)))
ray.shutdown()
"""


@pytest.mark.cluster  # its probe starts a Ray of its own
def test_import_platform_inside_ray_worker_with_repo_working_dir_is_stdlib(tmp_path):
    # A job-level working_dir can only be given to ray.init, so this probe owns a small Ray of its own.
    script = tmp_path / "probe.py"
    script.write_text(PROBE)
    proc = subprocess.run([sys.executable, str(script), str(REPO)], capture_output=True, text=True, timeout=300,
                          cwd=tmp_path, env={k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"})
    line = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    assert line, proc.stdout + proc.stderr
    result = json.loads(line[0][len("RESULT "):])
    # The worker really runs in (a copy of) the repo, which Ray puts first on its sys.path ...
    assert (Path(result["cwd"]) / "platform" / "palimpsest").is_dir()
    # ... and still gets the standard library module.
    assert Path(result["platform"]).resolve().parent == STDLIB
    assert result["system"] == "Linux"
