"""Time shipped jobs end to end, as a user runs them, and keep the figures in docs/timings.md.

    .venv/bin/python scripts/time_jobs.py jobs/quickstart.yaml jobs/unlearn/tofu_files.yaml
    .venv/bin/python scripts/time_jobs.py --all            # every job in jobs/ (hours on 2 cores)

Each job runs with `palimpsest run` (`palimpsest tune` when it has a tune: section) into a
temporary folder, one after another. The table keeps one row per job: its wall time, the exit
code, the machine (cores, load average before and after: an idle machine reads ~0), the commit
and the date; a row is replaced when its job is timed again. README and the job headers state
times only from this table. Run it from a fresh clone (`git clone . /tmp/x && cd /tmp/x && make
install`), with nothing else running.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
TABLE = ROOT / "docs" / "timings.md"
HEADER = """# Job timings

Measured by `scripts/time_jobs.py` (its docstring says how): each job run end to end with the
command a user types, on a fresh clone, one job at a time. Load: the 1-minute load average
before and after (an idle machine reads about 0; a figure taken under load says so).

| job | command | wall s | exit | cores | load before → after | commit | measured (UTC) |
|---|---|---|---|---|---|---|---|
"""
ROW = re.compile(r"^\| `(?P<job>[^`]+)` \|")


def command_for(job: Path) -> list[str]:
    document = yaml.safe_load(job.read_text())
    verb = "tune" if isinstance(document, dict) and document.get("tune") else "run"
    return [str(Path(sys.executable).parent / "palimpsest"), verb, str(job)]


def commit() -> str:
    found = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    # (the table itself, which this script rewrites after each job, does not make the tree dirty)
    dirty = subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain", "--untracked-files=no", "--", ".",
                            f":(exclude){TABLE.relative_to(ROOT).as_posix()}"],
                           capture_output=True, text=True).stdout.strip()
    return (found.stdout.strip() or "?") + ("-dirty" if dirty else "")


def time_job(job: Path) -> str:
    command = command_for(job)
    before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="palimpsest-time-") as scratch:
        started = time.perf_counter()
        done = subprocess.run([*command, "--out", str(Path(scratch) / "run")], cwd=ROOT, capture_output=True,
                              text=True)
        wall = time.perf_counter() - started
    after = os.getloadavg()[0]
    if done.returncode != 0:
        sys.stderr.write(done.stdout[-2000:] + done.stderr[-2000:])
    when = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M")
    shown = " ".join(["palimpsest", *command[1:]]).replace(str(ROOT) + "/", "")
    return (f"| `{job.relative_to(ROOT)}` | `{shown}` | {wall:.0f} | {done.returncode} | {os.cpu_count()} | "
            f"{before:.1f} → {after:.1f} | {commit()} | {when} |")


def write(rows: dict[str, str]) -> None:
    TABLE.write_text(HEADER + "".join(f"{rows[job]}\n" for job in sorted(rows)))


def read() -> dict[str, str]:
    if not TABLE.is_file():
        return {}
    return {m["job"]: line for line in TABLE.read_text().splitlines() if (m := ROW.match(line))}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("jobs", nargs="*", type=Path, help="job specs (paths inside the project)")
    parser.add_argument("--all", action="store_true", help="every job under jobs/")
    args = parser.parse_args()
    jobs = sorted((ROOT / "jobs").rglob("*.yaml")) if args.all else args.jobs
    if not jobs:
        parser.error("give job specs, or --all")
    rows = read()
    for job in jobs:
        job = job.resolve()
        print(f"timing {job.relative_to(ROOT)} ...", flush=True)
        rows[str(job.relative_to(ROOT))] = row = time_job(job)
        print(row, flush=True)
        write(rows)  # after each job: an interrupted series keeps what it measured
    return 0


if __name__ == "__main__":
    sys.exit(main())
