#!/usr/bin/env python3
"""GPU check of OUR training loop (docs/design.md, "GPU checks"), without Ray, at world size 1.

Every measured step goes through `palimpsest.train.loop.run_training` with a
`LocalSession` (what `run_without_ray` does), our backends (`make_backend`: DDP at world
size 1, DeepSpeed ZeRO-2, the Opacus `PrivateBackend`) and our models (`build_model`,
LoRA through peft). The only things this script adds: a timing wrapper around the loop's
`train_step` (CUDA-synchronised before and after each step) and, for the large models, a
no-op in place of the task-end checkpoint (it would write ~1.5 GB; the tiny parity runs
keep the real one).

Sections, each in its own try/except, recorded as {ok, figures, error, wall_s}; the JSON
($OUT/gpu_check.json) is rewritten after every section, so a timeout still returns what
finished:
  meta              versions, device
  parity            tiny-llama, same seed, N steps on CPU and on GPU (DDP backend; ZeRO-2 fp32 too)
  throughput_plain  llama-350m (random init), bf16 weights, DDP backend, sequence 1024
  throughput_zero2  same model, DeepSpeed ZeRO-2, bf16 (fp32 master weights), torch AdamW (no JIT ops)
  dp_*              Opacus DP-SGD (hooks, ghost clipping) and DP-LoRA (hooks, ghost) vs non-private,
                    fp32, on a ~134M model; dp_summary gives the ratios
  throughput_packed     the same model on variable-length items: padded rows against training.packing
  throughput_compiled   the plain path with training.compile
  throughput_zero3      DeepSpeed ZeRO-3, bf16
  baseline_trainer      Hugging Face `Trainer` on the same model, items, batch and precision (when it installs)
MFU = 6 · parameters · tokens/s ÷ the device's dense bf16 peak, looked up by its name in PEAKS (H100
SXM/PCIe/NVL, H200 SXM/NVL, A100; LoRA/DP runs use the same formula, so read their figure as "model
FLOPs at 6N", not hardware utilisation). The plain path is the default one: fp32 weights, bf16 autocast
(training.precision auto), sdpa attention.

Device command (repo root; run with carry [".whl"]):

python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site && { DS_BUILD_OPS=0 python3 -m pip install -q --no-index --no-deps --no-build-isolation --no-compile --no-cache-dir --target /tmp/site .whl/deepspeed-0.19.8.tar.gz || python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/fallback/deepspeed-0.19.8-py3-none-any.whl; }; PYTHONUNBUFFERED=1 python3 scripts/gpu_check.py --out $OUT 2>&1 | tee $OUT/gpu_check.log

(DeepSpeed is built there from its sdist, so it records that machine's torch and CUDA; if that build
fails, the wheel built here from the same sdist (pure Python, no ops; DS_ACCELERATOR=cuda is set by this
script) goes in instead. The group ends with `;`: if DeepSpeed cannot be installed at all, every section
but throughput_zero2 and parity's ZeRO-2 part still runs. Suggested timeout_s: 540; --budget-s (420)
skips sections that would start later than that.)

Here, without a GPU:  .venv/bin/python scripts/gpu_check.py --dry-run --out /tmp/gpu_check_dry
(tests/test_bench.py runs it so.)
"""

from __future__ import annotations

import argparse
from dataclasses import replace
import gc
import json
import os
import sys
import tempfile
import time
import traceback
from pathlib import Path
from types import SimpleNamespace

ROOT = Path(__file__).resolve().parents[1]
for source_root in ("envs", "platform"):  # the source roots; the package is `palimpsest`
    if str(ROOT / source_root) not in sys.path:
        sys.path.insert(0, str(ROOT / source_root))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from palimpsest.train.flops import train_flops  # noqa: E402

# Dense bf16 tensor-core peak by device name (torch.cuda.get_device_name), first match wins: NVIDIA's
# datasheet figures, whose bf16 numbers are quoted "with sparsity" (halved here). Entered 2026-12-07.
PEAKS = (
    ("H200 NVL", "H200 NVL", 835e12, "NVIDIA H200 Tensor Core GPU datasheet: 1,671 TFLOPS bf16 with sparsity"),
    ("H200", "H200 SXM", 989e12, "NVIDIA H200 Tensor Core GPU datasheet: 1,979 TFLOPS bf16 with sparsity"),
    ("H100 PCIe", "H100 PCIe", 756e12, "NVIDIA H100 Tensor Core GPU datasheet: 1,513 TFLOPS bf16 with sparsity"),
    ("H100 NVL", "H100 NVL", 835e12, "NVIDIA H100 Tensor Core GPU datasheet: 1,671 TFLOPS bf16 with sparsity"),
    ("H100", "H100 SXM", 989e12, "NVIDIA H100 Tensor Core GPU datasheet: 1,979 TFLOPS bf16 with sparsity"),
    ("A100", "A100", 312e12, "NVIDIA A100 Tensor Core GPU datasheet: 312 TFLOPS bf16 dense"),
)
PEAKS_ENTERED = "2026-12-07"


def peak_for(device_name: str | None) -> dict:
    """The PEAKS entry for `device_name`; without a GPU (the dry run) H200 SXM's, marked assumed."""
    for pattern, name, flops, source in PEAKS:
        if device_name and pattern in device_name:
            return {"device": name, "flops": flops, "source": source, "entered": PEAKS_ENTERED, "assumed": False}
    pattern, name, flops, source = PEAKS[1]
    return {"device": name, "flops": flops, "source": source, "entered": PEAKS_ENTERED, "assumed": True,
            "why": f"{device_name or 'no GPU'} is not in PEAKS"}


PEAK = peak_for(None)  # set in main() from the device
PAD, BOS, EOS = 0, 1, 2
STARTED = time.perf_counter()

# Sizes. "gpu" is what the device runs; "dry" exercises the same code paths on a CPU in seconds.
SIZES = {
    "gpu": dict(
        parity=dict(preset="tiny-llama", vocab=48, seq=None, items=24, batch=8, steps=8, lr=1e-2),
        throughput=dict(preset="llama-350m", vocab=32000, seq=1024, batch=16, warmup=3, measured=10, lr=3e-4),
        dp=dict(preset="gpu-check-dp", vocab=32000, seq=512, batch=16, items=256, warmup=2, measured=6, lr=3e-4),
    ),
    "dry": dict(
        parity=dict(preset="tiny-llama", vocab=48, seq=None, items=24, batch=8, steps=4, lr=1e-2),
        throughput=dict(preset="tiny-llama", vocab=256, seq=64, batch=4, warmup=1, measured=2, lr=3e-4),
        dp=dict(preset="tiny-llama", vocab=256, seq=32, batch=4, items=32, warmup=1, measured=2, lr=3e-4),
    ),
}
# The DP section's model (~134M parameters with vocab 32000): registered at run time, presets.py is untouched.
DP_PRESET = dict(hidden_size=768, intermediate_size=2048, num_hidden_layers=12, num_attention_heads=12,
                 num_key_value_heads=12, max_position_embeddings=1024)
LORA = {"r": 8, "alpha": 16.0, "dropout": 0.0, "target_modules": ["q_proj", "v_proj"]}


# ------------------------------------------------------------------------------ recording
class Recorder:
    def __init__(self, out_dir: Path, budget_s: float):
        self.path = out_dir / "gpu_check.json"
        out_dir.mkdir(parents=True, exist_ok=True)
        self.budget_s = budget_s
        self.data: dict = {"sections": {}, "finished": False}

    def write(self) -> None:
        self.data["elapsed_s"] = round(time.perf_counter() - STARTED, 2)
        partial = self.path.with_name(self.path.name + ".partial")
        partial.write_text(json.dumps(self.data, indent=1, default=_jsonable))
        partial.replace(self.path)

    def section(self, name: str, fn, summary=None) -> dict:
        """Run `fn()` -> figures; record {ok, figures, error, wall_s}; print one line."""
        elapsed = time.perf_counter() - STARTED
        if elapsed > self.budget_s:
            entry = {"ok": False, "figures": None, "error": f"skipped: {elapsed:.0f}s elapsed > budget "
                                                           f"{self.budget_s:.0f}s", "wall_s": 0.0}
        else:
            _reset_memory()
            start = time.perf_counter()
            try:
                figures = fn()
                # A section that ran but whose check failed keeps its figures: {"check_failed": why, ...}.
                failed = figures.get("check_failed") if isinstance(figures, dict) else None
                entry = {"ok": failed is None, "figures": figures, "error": failed}
            except Exception as error:  # one failing section must not stop the others
                entry = {"ok": False, "figures": None, "error": f"{type(error).__name__}: {error}",
                         "traceback": traceback.format_exc()[-4000:]}
            entry["wall_s"] = round(time.perf_counter() - start, 2)
            _reset_memory()
        self.data["sections"][name] = entry
        self.write()
        if entry["figures"] is not None:
            try:
                line = summary(entry["figures"]) if summary else ""
            except Exception as error:  # a summary line must never lose the section
                line = f"(summary failed: {error})"
            status = "OK" if entry["ok"] else f"CHECK FAILED: {entry['error']}"
            print(f"[gpu_check] {name}: {status} ({entry['wall_s']:.1f}s) {line}", flush=True)
        else:
            print(f"[gpu_check] {name}: FAILED ({entry['wall_s']:.1f}s) {entry['error'][:300]}", flush=True)
            if "traceback" in entry:
                print(entry["traceback"][-1500:], flush=True)
        return entry


def _jsonable(value):
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    if isinstance(value, torch.Tensor):
        return value.tolist()
    return str(value)


def _reset_memory() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def _sync(device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


# ------------------------------------------------------------------------------ data and configs
def qa_items(n: int, *, vocab: int, seq: int | None, seed: int):
    """`n` question/answer pairs as token ids. `seq`: every example exactly `seq` tokens (prompt + answer +
    eos, no padding; loss on the answer half); None: short random pairs like tests/synthetic.py."""
    from palimpsest.train.batching import TokenizedQA

    rng = np.random.default_rng(seed)
    items = []
    for _ in range(n):
        if seq is None:
            prompt = (BOS, *rng.integers(3, vocab, size=rng.integers(3, 7)).tolist())
            answer = tuple(rng.integers(3, vocab, size=rng.integers(1, 4)).tolist())
        else:
            half = seq // 2
            prompt = (BOS, *rng.integers(3, vocab, size=half - 1).tolist())
            answer = tuple(rng.integers(3, vocab, size=seq - half - 1).tolist())
        items.append(TokenizedQA(prompt, answer))
    return items


def model_cfg(preset: str, vocab: int, *, dtype: str = "float32", lora: dict | None = None) -> dict:
    from palimpsest.models import model_config

    spec = {"preset": preset, "dtype": dtype, **({"lora": lora} if lora else {})}
    return model_config(spec, vocab_size=vocab, pad_id=PAD, bos_id=BOS, eos_id=EOS, seed=0)


def run_loop(cfg: dict, items, optimisation, *, device: str, threads: int, privacy=None,
             real_checkpoint: bool = False) -> dict:
    """One task through our loop (`run_training` + `LocalSession`, i.e. `run_without_ray`) on `device`.

    Returns per-step timings (synchronised around the loop's `train_step`), losses, parameters,
    peak memory and the loop's own result.
    """
    from palimpsest.models import unwrap
    from palimpsest.train import loop as loop_module
    from palimpsest.train.config import Evaluation, LoopConfig
    from palimpsest.train.session import LocalSession

    steps: list[dict] = []
    original_step, original_checkpoint = loop_module.train_step, loop_module.save_checkpoint

    def timed_train_step(ctx, method, backend, batch, **kwargs):
        _sync(ctx.device)
        start = time.perf_counter()
        norm = original_step(ctx, method, backend, batch, **kwargs)
        _sync(ctx.device)
        steps.append({"s": time.perf_counter() - start, "examples": len(batch),
                      "tokens": sum(len(it.prompt) + len(it.answer) + 1 for _, it in batch.flat())})
        return norm

    def no_checkpoint(session, model_config, model, backend, **kwargs):
        # The loop only uses the returned state when the backend shards parameters (ZeRO-3, FSDP).
        return backend.full_state_dict() if backend.shards_parameters else unwrap(model).state_dict()

    config = LoopConfig(seed=3, model=cfg, optimisation=optimisation, evaluation=Evaluation(),
                        tasks=[list(items)], eval_sets={}, privacy=privacy, threads=threads)
    loop_module.train_step = timed_train_step
    if not real_checkpoint:
        loop_module.save_checkpoint = no_checkpoint
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    try:
        with tempfile.TemporaryDirectory(prefix="gpu-check-") as root:
            wall = time.perf_counter()
            result = loop_module.run_training(config, LocalSession(root, device=device))
            wall = time.perf_counter() - wall
            checkpoints = len(list(Path(root).glob("checkpoint_*")))
    finally:
        loop_module.train_step, loop_module.save_checkpoint = original_step, original_checkpoint
    (method,) = result["methods"]
    losses = [r["value"] for r in method["records"] if r["metric"] == "train_loss"]
    return {"steps": steps, "losses": losses, "parameters": method["parameters"], "privacy": method["privacy"],
            "loop_wall_s": wall, "checkpoints_written": checkpoints,
            "peak_mem_gib": torch.cuda.max_memory_allocated() / 2**30 if device == "cuda" else None}


def speed(run: dict, warmup: int, *, peak_flops: float | None = None) -> dict:
    """Tokens/s, step time and MFU over the steps after `warmup`."""
    measured = run["steps"][warmup:]
    seconds = sum(s["s"] for s in measured)
    tokens = sum(s["tokens"] for s in measured)
    params = run["parameters"]["total"]
    tps = tokens / seconds if seconds else float("nan")
    return {
        "measured_steps": len(measured),
        "step_s_mean": seconds / max(len(measured), 1),
        "step_s_min": min((s["s"] for s in measured), default=float("nan")),
        "step_s_max": max((s["s"] for s in measured), default=float("nan")),
        "warmup_step_s": [round(s["s"], 4) for s in run["steps"][:warmup]],
        "examples_per_step_mean": sum(s["examples"] for s in measured) / max(len(measured), 1),
        "tokens_per_s": tps,
        "mfu": train_flops(params, tps) / (peak_flops or PEAK["flops"]),
        "mfu_peak": PEAK["device"],
        "parameters_total": params,
        "parameters_trainable": run["parameters"]["trainable"],
        "peak_mem_gib": run["peak_mem_gib"],
        "loop_wall_s": run["loop_wall_s"],
        "losses": run["losses"],
        "privacy": run["privacy"],
    }


# ------------------------------------------------------------------------------ sections
def section_meta(args, device: str) -> dict:
    import importlib.metadata as metadata
    import platform as stdlib_platform

    versions = {}
    for name in ("torch", "transformers", "peft", "opacus", "deepspeed", "pydantic", "numpy", "triton"):
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    figures = {"python": sys.version.split()[0], "machine": stdlib_platform.machine(), "versions": versions,
               "device": device, "dry_run": args.cpu_dry_run, "cpu_count": os.cpu_count(),
               "sizes": SIZES["dry" if args.cpu_dry_run else "gpu"], "dp_preset": DP_PRESET, "lora": LORA,
               "peak": PEAK, "palimpsest": str(ROOT / "platform" / "palimpsest"),
               "ray_importable": _importable("ray")}
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        figures.update(gpu=props.name, gpu_mem_gib=props.total_memory / 2**30, sm_count=props.multi_processor_count,
                       capability=f"{props.major}.{props.minor}", cuda=torch.version.cuda,
                       tf32_matmul=torch.backends.cuda.matmul.allow_tf32)
    try:  # how the installed DeepSpeed was built (read as text: importing deepspeed here is not needed)
        import importlib.util

        spec = importlib.util.find_spec("deepspeed")
        info = Path(spec.origin).with_name("git_version_info_installed.py") if spec and spec.origin else None
        figures["deepspeed_build"] = info.read_text().strip() if info and info.exists() else None
    except Exception as error:
        figures["deepspeed_build"] = f"unreadable: {error}"
    import palimpsest.train.loop  # noqa: F401  (our loop imports without Ray)

    figures["ray_loaded_by_loop_import"] = "ray" in sys.modules
    return figures


def _importable(name: str) -> bool:
    import importlib.util

    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


def section_parity(sizes: dict, gpu_device: str, threads: int, tolerance: float) -> dict:
    """Same seed, same batches: the loop's per-step train losses on CPU and on the GPU."""
    from palimpsest.train.config import Optimisation

    p = sizes["parity"]
    items = qa_items(p["items"], vocab=p["vocab"], seq=p["seq"], seed=0)
    cfg = model_cfg(p["preset"], p["vocab"])
    opt = Optimisation(steps=p["steps"], batch_size=p["batch"], lr=p["lr"], lr_schedule="constant", log_every=1)
    cpu = run_loop(cfg, items, opt, device="cpu", threads=threads, real_checkpoint=True)
    gpu = run_loop(cfg, items, opt, device=gpu_device, threads=threads, real_checkpoint=True)

    def compare(a, b):
        diffs = [abs(x - y) for x, y in zip(a, b)]
        rel = [d / max(abs(x), 1e-12) for d, x in zip(diffs, a)]
        return {"max_abs_diff": max(diffs), "max_rel_diff": max(rel),
                "within_tolerance": len(a) == len(b) and max(rel) <= tolerance}

    figures = {"tolerance_rel": tolerance, "steps": p["steps"], "gpu_device": gpu_device,
               "cpu_losses": cpu["losses"], "gpu_losses": gpu["losses"], **compare(cpu["losses"], gpu["losses"]),
               "checkpoints_written": [cpu["checkpoints_written"], gpu["checkpoints_written"]]}
    try:  # DeepSpeed ZeRO-2 (fp32) on the GPU against the same CPU run: DDP and ZeRO give the same updates
        zero = run_loop(cfg, items, replace(opt, backend="deepspeed", zero_stage=2),
                        device=gpu_device, threads=threads, real_checkpoint=True)
        figures["gpu_zero2_losses"] = zero["losses"]
        figures["gpu_zero2_vs_cpu"] = compare(cpu["losses"], zero["losses"])
    except Exception as error:
        figures["gpu_zero2_error"] = f"{type(error).__name__}: {error}"
        figures["gpu_zero2_traceback"] = traceback.format_exc()[-3000:]
    if not figures["within_tolerance"]:
        figures["check_failed"] = f"CPU/GPU losses differ beyond relative {tolerance}"
    return figures


def section_throughput(sizes: dict, device: str, threads: int, *, backend: str, zero_stage: int = 2,
                       **training) -> dict:
    """Our default path (fp32 weights, precision auto: bf16 autocast on GPU, sdpa), or DeepSpeed ZeRO at bf16
    (fp32 master weights; DeepSpeed casts the module), with `training` options on top (compile, ...)."""
    from palimpsest.train.config import Optimisation

    t = sizes["throughput"]
    steps = t["warmup"] + t["measured"]
    items = qa_items(max(4 * t["batch"], 64), vocab=t["vocab"], seq=t["seq"], seed=1)
    cfg = model_cfg(t["preset"], t["vocab"], dtype="float32")
    if backend == "ddp":
        opt = Optimisation(steps=steps, batch_size=t["batch"], lr=t["lr"], log_every=steps, precision="auto",
                           **training)
    else:
        opt = Optimisation(steps=steps, batch_size=t["batch"], lr=t["lr"], log_every=steps, backend="deepspeed",
                           zero_stage=zero_stage, precision="bf16", **training)
    run = run_loop(cfg, items, opt, device=device, threads=threads)
    return {"backend": backend, "zero_stage": zero_stage if backend == "deepspeed" else None, "training": training,
            "preset": t["preset"], "seq": t["seq"], "batch": t["batch"], "tokens_per_step": t["batch"] * t["seq"],
            **speed(run, t["warmup"])}


def varied_items(n: int, *, vocab: int, seq: int, seed: int):
    """QA-like items of 1/8 to all of `seq` tokens (a fact world's are short): what padding wastes, packing keeps."""
    from palimpsest.train.batching import TokenizedQA

    rng = np.random.default_rng(seed)
    items = []
    for _ in range(n):
        length = int(rng.integers(max(4, seq // 8), seq + 1))
        half = length // 2
        items.append(TokenizedQA((BOS, *rng.integers(3, vocab, size=half - 1).tolist()),
                                 tuple(rng.integers(3, vocab, size=length - half - 1).tolist())))
    return items


def section_packed(sizes: dict, device: str, threads: int) -> dict:
    """Padded rows against packed ones on the same variable-length items: tokens/s counts real tokens only."""
    from palimpsest.train.config import Optimisation

    t = sizes["throughput"]
    steps = t["warmup"] + t["measured"]
    items = varied_items(max(4 * t["batch"], 64), vocab=t["vocab"], seq=t["seq"], seed=2)
    cfg = model_cfg(t["preset"], t["vocab"], dtype="float32")
    figures = {}
    for name, packing in (("padded", False), ("packed", True)):
        opt = Optimisation(steps=steps, batch_size=t["batch"], lr=t["lr"], log_every=steps, precision="auto",
                           packing=packing, packing_row_tokens=t["seq"])
        figures[name] = speed(run_loop(cfg, items, opt, device=device, threads=threads), t["warmup"])
    figures["packed_vs_padded_x"] = figures["packed"]["tokens_per_s"] / figures["padded"]["tokens_per_s"]
    figures["mfu"] = figures["packed"]["mfu"]
    return figures


def section_trainer(sizes: dict, device: str, threads: int) -> dict:
    """Hugging Face `Trainer` on the same model config, items, batch, LR and precision as throughput_plain."""
    from transformers import Trainer, TrainerCallback, TrainingArguments

    from palimpsest.models import build_model
    from palimpsest.train.batching import collate_qa

    t = sizes["throughput"]
    steps = t["warmup"] + t["measured"]
    items = qa_items(max(4 * t["batch"], 64), vocab=t["vocab"], seq=t["seq"], seed=1)
    model = build_model(model_cfg(t["preset"], t["vocab"], dtype="float32"))
    timings: list[float] = []

    class StepTimer(TrainerCallback):
        def on_step_begin(self, args, state, control, **kwargs):
            _sync(device)
            self.start = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            _sync(device)
            timings.append(time.perf_counter() - self.start)

    bf16 = device == "cuda" and torch.cuda.is_bf16_supported()
    with tempfile.TemporaryDirectory(prefix="gpu-check-trainer-") as root:
        arguments = TrainingArguments(output_dir=root, per_device_train_batch_size=t["batch"], max_steps=steps,
                                      learning_rate=t["lr"], lr_scheduler_type="cosine", bf16=bf16,
                                      use_cpu=device != "cuda", report_to=[], save_strategy="no",
                                      logging_strategy="no", dataloader_num_workers=0, seed=3,
                                      remove_unused_columns=False, disable_tqdm=True)
        trainer = Trainer(model=model, args=arguments, train_dataset=list(items), callbacks=[StepTimer()],
                          data_collator=lambda batch: collate_qa(batch, pad_id=PAD, eos_id=EOS))
        trainer.train()
    measured = timings[t["warmup"]:]
    tokens = sum(len(it.prompt) + len(it.answer) + 1 for it in items[: t["batch"]])  # every item is seq tokens
    tps = tokens * len(measured) / sum(measured)
    return {"preset": t["preset"], "seq": t["seq"], "batch": t["batch"], "bf16": bf16, "tokens_per_s": tps,
            "step_s_mean": sum(measured) / len(measured), "measured_steps": len(measured),
            "mfu": train_flops(sum(p.numel() for p in model.parameters()), tps) / PEAK["flops"],
            "mfu_peak": PEAK["device"]}


def section_dp(sizes: dict, device: str, threads: int, *, mode: str | None, lora: bool) -> dict:
    """One run at the DP size: non-private (mode None) or DP-SGD with `mode`, full weights or LoRA."""
    from palimpsest.privacy import make_plan
    from palimpsest.train.config import Optimisation

    d = sizes["dp"]
    steps = d["warmup"] + d["measured"]
    items = qa_items(d["items"], vocab=d["vocab"], seq=d["seq"], seed=2)
    cfg = model_cfg(d["preset"], d["vocab"], lora=LORA if lora else None)
    opt = Optimisation(steps=steps, batch_size=d["batch"], lr=d["lr"], log_every=steps)
    plan = None
    if mode is not None:
        spec = SimpleNamespace(epsilon=8.0, delta=None, accountant="rdp", max_grad_norm=1.0, grad_sample_mode=mode)
        plan = make_plan(spec, task_sizes=[len(items)], batch_size=d["batch"], steps_per_task=steps)
    run = run_loop(cfg, items, opt, device=device, threads=threads, privacy=plan)
    out = {"mode": mode or "non-private", "lora": lora, "preset": d["preset"], "seq": d["seq"],
           "expected_batch": d["batch"], **speed(run, d["warmup"])}
    if plan is not None:
        out["noise_multiplier"] = plan.noise_multiplier
        out["sample_rate"] = plan.sample_rates[0]
    return out


def dp_summary(sections: dict) -> dict:
    """Ratios of each private run to its non-private reference (tokens/s; Poisson batches vary in size)."""
    def figures(name):
        entry = sections.get(name) or {}
        return entry.get("figures") if entry.get("ok") else None

    ratios = {}
    for name, reference in (("dp_hooks", "dp_nonprivate"), ("dp_ghost", "dp_nonprivate"),
                            ("dp_lora_hooks", "dp_nonprivate_lora"), ("dp_lora_ghost", "dp_nonprivate_lora"),
                            ("dp_nonprivate_lora", "dp_nonprivate")):
        run, ref = figures(name), figures(reference)
        if run and ref:
            ratios[f"{name}_vs_{reference}"] = {
                "tokens_per_s_ratio": run["tokens_per_s"] / ref["tokens_per_s"],
                "slowdown_x": ref["tokens_per_s"] / run["tokens_per_s"],
                "peak_mem_ratio": (run["peak_mem_gib"] / ref["peak_mem_gib"]
                                   if run["peak_mem_gib"] and ref["peak_mem_gib"] else None),
            }
    if not ratios:
        raise RuntimeError("no DP run and its reference both finished")
    return ratios


# ------------------------------------------------------------------------------ main
def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default=os.environ.get("OUT") or "gpu_check_out", help="folder for gpu_check.json")
    parser.add_argument("--dry-run", "--cpu-dry-run", dest="cpu_dry_run", action="store_true",
                        help="tiny sizes on the CPU: checks the code paths; the GPU side of parity is the CPU again")
    parser.add_argument("--budget-s", type=float, default=420.0,
                        help="sections that would start after this many seconds are skipped (recorded as such)")
    parser.add_argument("--tolerance", type=float, default=1e-3, help="parity: max relative loss difference")
    parser.add_argument("--only", default="", help="comma-separated section names (default: all)")
    args = parser.parse_args()

    if args.cpu_dry_run:
        device, sizes, threads = "cpu", SIZES["dry"], 1
    else:
        if not torch.cuda.is_available():
            print("[gpu_check] no CUDA device: use --dry-run", file=sys.stderr)
            return 2
        device, sizes, threads = "cuda", SIZES["gpu"], min(8, os.cpu_count() or 1)
        os.environ.setdefault("DS_ACCELERATOR", "cuda")
    global PEAK
    PEAK = peak_for(torch.cuda.get_device_name(0) if device == "cuda" else None)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from palimpsest.presets import MODEL_PRESETS

    MODEL_PRESETS.setdefault("gpu-check-dp", DP_PRESET)

    recorder = Recorder(Path(args.out), args.budget_s)
    only = {s.strip() for s in args.only.split(",") if s.strip()}

    def wanted(name):
        return not only or name in only

    def speed_line(f):
        return (f"{f['tokens_per_s']:,.0f} tok/s, step {f['step_s_mean'] * 1e3:.1f} ms, MFU {f['mfu'] * 100:.1f}%, "
                f"peak {f['peak_mem_gib'] or 0:.1f} GiB, params {f['parameters_total'] / 1e6:.1f}M "
                f"(trainable {f['parameters_trainable'] / 1e6:.2f}M)")

    recorder.section("meta", lambda: section_meta(args, device),
                     lambda f: f"torch {f['versions']['torch']} transformers {f['versions']['transformers']} "
                               f"opacus {f['versions']['opacus']} deepspeed {f['versions']['deepspeed']} "
                               f"{f.get('gpu', 'cpu')}")
    if wanted("parity"):
        recorder.section("parity", lambda: section_parity(sizes, device, threads, args.tolerance),
                         lambda f: f"max |Δloss| {f['max_abs_diff']:.2e} (rel {f['max_rel_diff']:.2e}); "
                                   f"ZeRO-2: {f.get('gpu_zero2_vs_cpu', f.get('gpu_zero2_error'))}")
    for name, backend, options in (("throughput_plain", "ddp", {}), ("throughput_compiled", "ddp", {"compile": True}),
                                   ("throughput_zero2", "deepspeed", {"zero_stage": 2}),
                                   ("throughput_zero3", "deepspeed", {"zero_stage": 3})):
        if wanted(name):
            recorder.section(name, lambda b=backend, o=options: section_throughput(sizes, device, threads, backend=b,
                                                                                   **o), speed_line)
    if wanted("throughput_packed"):
        recorder.section("throughput_packed", lambda: section_packed(sizes, device, threads),
                         lambda f: f"packed {f['packed']['tokens_per_s']:,.0f} tok/s against padded "
                                   f"{f['padded']['tokens_per_s']:,.0f} ({f['packed_vs_padded_x']:.2f}x)")
    if wanted("baseline_trainer"):
        recorder.section("baseline_trainer", lambda: section_trainer(sizes, device, threads),
                         lambda f: f"Trainer {f['tokens_per_s']:,.0f} tok/s, MFU {f['mfu'] * 100:.1f}%")
    for name, mode, lora in (("dp_nonprivate", None, False), ("dp_hooks", "hooks", False),
                             ("dp_ghost", "ghost", False), ("dp_nonprivate_lora", None, True),
                             ("dp_lora_hooks", "hooks", True), ("dp_lora_ghost", "ghost", True)):
        if wanted(name) or (only and wanted("dp")):
            recorder.section(name, lambda m=mode, l=lora: section_dp(sizes, device, threads, mode=m, lora=l),
                             speed_line)
    if any(name.startswith("dp_") for name in recorder.data["sections"]):
        recorder.section("dp_summary", lambda: dp_summary(recorder.data["sections"]),
                         lambda f: "; ".join(f"{k}: {v['slowdown_x']:.2f}x the time per token" for k, v in f.items()))

    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():  # DeepSpeed's single-process group
        dist.destroy_process_group()
    recorder.data["finished"] = True
    recorder.write()
    failed = [name for name, entry in recorder.data["sections"].items() if not entry["ok"]]
    print(f"[gpu_check] done in {time.perf_counter() - STARTED:.0f}s; {len(failed)} failed: {failed}; "
          f"wrote {recorder.path}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
