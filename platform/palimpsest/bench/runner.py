"""`kind: bench` — run benchmark sections (`palimpsest.bench`) and write bench.json beside the summary.

prepare(spec)  -> nothing to load (an unlearn section's job was validated with the spec)
run(...)       -> the section's rows -> bench.json, summary.json (rows and table)

`palimpsest bench DIR` joins the benchmarks of every spec in a folder into one bench job,
so `make bench` prints one table.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import time
from datetime import datetime, timezone
from pathlib import Path
from types import SimpleNamespace

from palimpsest import progress as ui
from palimpsest.atomic import atomic_write_text
from palimpsest.run_folder import RunFolder

# A section may run without Ray; these need it for some of their cases (they skip those and say so).
NEEDS_RAY = False


def prepare(spec, *, saved_tokenizer=None):
    return None


def machine() -> dict:
    """What the figures were measured on."""
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "usable_cores": len(os.sched_getaffinity(0)),
            "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
            "python": platform.python_version(), "torch": torch.__version__, "platform": platform.platform()}


def run(spec, prepared, folder: RunFolder, *, use_ray: bool = True, progress=None) -> dict:
    """Measure each benchmark in turn; bench.json is rewritten after each, so an interrupt keeps what finished."""
    from palimpsest.bench import section

    started = time.perf_counter()
    rows, timings = [], {}
    labels = [b.type if [c.type for c in spec.benchmarks].count(b.type) == 1 else f"{b.type}-{i + 1}"
              for i, b in enumerate(spec.benchmarks)]
    key = f"{folder.path.name} bench"
    ui.begin(key, "bench sections", len(labels))
    for label, benchmark in zip(labels, spec.benchmarks):
        ui.say(f"bench {label} ...")
        ui.update(key, note=label)
        began = time.perf_counter()
        workdir = folder.path / "work" / label
        workdir.mkdir(parents=True, exist_ok=True)
        one = SimpleNamespace(name=spec.name, seed=spec.seed, benchmark=benchmark)
        rows += [row.to_dict() for row in section(benchmark.type)(one, workdir, use_ray)]
        timings[label] = round(time.perf_counter() - began, 1)
        ui.say(f"bench {label}: done in {timings[label]:.0f} s")
        ui.update(key, advance=1, note=f"{label}: {timings[label]:.0f} s")
        _write_bench(folder, rows, timings)
    ui.end(key)
    shutil.rmtree(folder.path / "work", ignore_errors=True)
    return {
        "status": "ok", "kind": "bench", "name": spec.name, "seed": spec.seed, "rows": rows,
        "section_wall_s": timings,
        "missed_targets": [missed(r) for r in rows if r["meets"] is False],
        "machine": machine(), "cost": {"wall_s": round(time.perf_counter() - started, 3)},
    }


def missed(row: dict) -> str:
    """A missed target in words: the ratio, or the value when the target is absolute ('>= 1e7 steps/s')."""
    absolute = len(row["target"].split()) > 2
    figure = row["value"] if absolute or row["ratio"] is None else row["ratio"]
    return f"{row['section']}: {row['case']} {figure:.4g}, target {row['target']}"


def _write_bench(folder: RunFolder, rows: list[dict], timings: dict) -> None:
    document = {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "machine": machine(),
                "section_wall_s": timings, "rows": rows}
    atomic_write_text(folder.path / "bench.json", json.dumps(document, indent=1) + "\n")
