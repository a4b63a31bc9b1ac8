"""Ctrl-C a `palimpsest` command the way a terminal does, at a chosen line of its output."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import tiers


def interrupt_at(args: list[str], cwd, marker, *, timeout_s: float = 400) -> tuple[int, str, str | None]:
    """Run `python -m palimpsest.cli ARGS` under its own local Ray, in its own process group; send SIGINT to
    the group at the first output line for which `marker(line)` is true.

    Returns the exit code, the whole output and the line it was interrupted at (None if never).
    """
    if "--no-ray" not in args:
        tiers.require_cluster_marker("a CLI subprocess with a local Ray of its own")
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.pop("RAY_ADDRESS", None)
    process = subprocess.Popen([sys.executable, "-m", "palimpsest.cli", *args], cwd=cwd, env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    lines, hit = [], None
    deadline = time.time() + timeout_s
    for line in process.stdout:
        lines.append(line)
        if marker(line):
            hit = line
            os.killpg(process.pid, signal.SIGINT)  # Ctrl-C from a terminal reaches the whole group
            break
        if time.time() > deadline:
            os.killpg(process.pid, signal.SIGKILL)
            break
    lines += process.stdout.readlines()
    return process.wait(timeout=120), "".join(lines), hit
