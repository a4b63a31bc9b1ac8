"""LLM benchmarks: the training loop against bare PyTorch and `Trainer`, DeepSpeed ZeRO against DDP, DP against not.

Every case trains the same model on the same fact-world items with the same global
batch, learning rate, schedule and clipping. Throughput is the steady state: tokens of
the steps after the first `STEADY_SKIP` over their wall time (our loop measures it
itself, `MethodResult.steady_*`; the baselines here the same way), so model building,
evaluation and checkpoints are not in it. The end-to-end wall time of a Ray Train
`fit()` is reported apart: its fixed start-up is what Ray costs a short job.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import torch

from palimpsest.bench import Row, best, compare
from palimpsest.train.loop import STEADY_SKIP


def train_document(bench, name: str, *, training: dict | None = None, model: dict | None = None,
                   privacy: dict | None = None, workers: int = 1) -> dict:
    """A `kind: train` job for one case: the bench's model, data, batch and steps."""
    document = {
        "kind": "train", "name": name, "seed": 0,
        "model": {**bench.model.model_dump(exclude_none=True), **(model or {})},
        "data": {"source": "factworld", "num_entities": bench.num_entities, "attributes_per_entity": 2,
                 "split": "all"},
        "training": {"steps": bench.steps, "batch_size": bench.batch_size, "lr": bench.lr, "warmup_steps": 0,
                     "log_every": bench.steps, **(training or {})},
        "eval": {"max_examples": 16, "holdout": False, "batch_size": 64},
        "scaling": {"num_workers": workers, "cpus_per_worker": bench.threads},
    }
    if privacy is not None:
        document["privacy"] = privacy
    return document


def prepared_case(document: dict):
    from palimpsest.runners import train
    from palimpsest.spec import parse_spec

    spec = parse_spec(document)
    return spec, train.prepare(spec)


def ours(document: dict, workdir: Path, *, use_ray: bool) -> dict:
    """Our loop on `document` (Ray Train, or in this process): steady figures, end-to-end wall and tokens."""
    from palimpsest.runners.common import fit
    from palimpsest.run_folder import RunFolder

    spec, prepared = prepared_case(document)
    folder = RunFolder.create(document["name"], workdir / f"{document['name']}-{time.monotonic_ns()}")
    started = time.perf_counter()
    output, _ = fit(spec, prepared.worker_config, folder, use_ray=use_ray)
    wall = time.perf_counter() - started
    shutil.rmtree(folder.path, ignore_errors=True)
    (result,) = output["methods"]
    return {"tokens_per_s": result["steady_tokens"] / result["steady_wall_s"],
            "step_s": result["steady_wall_s"] / result["steady_steps"],
            "token_s": result["steady_wall_s"] / result["steady_tokens"], "fit_wall_s": wall,
            "parameters": result["parameters"]}


# ----------------------------------------------------------------------------- baselines


def _batches(config, steps: int) -> list[list]:
    """The batches our loop trains on, step by step (seeded epochs over the task): every case gets these."""
    from palimpsest.train.sampling import derive_seed, global_batch_indices

    items = config.tasks[0]
    seed = derive_seed(config.seed, "task-order", 0)
    return [[items[i] for i in global_batch_indices(step, num_examples=len(items),
                                                    batch_size=config.optimisation.batch_size, seed=seed).tolist()]
            for step in range(steps)]


def _tokens(batch) -> int:
    return sum(len(it.prompt) + len(it.answer) + 1 for it in batch)


def bare_pytorch(config, threads: int) -> dict:
    """The limit: the same model, batches, AdamW, clipping and schedule in a plain loop; no host sync per step."""
    from transformers import get_scheduler

    from palimpsest.models import build_model
    from palimpsest.train.backends import adamw
    from palimpsest.train.batching import collate_qa

    torch.set_num_threads(threads)
    opt, ids = config.optimisation, config.model
    model = build_model(ids)
    model.train()
    optimizer = adamw([p for p in model.parameters() if p.requires_grad], lr=opt.lr, weight_decay=opt.weight_decay)
    scheduler = get_scheduler(opt.lr_schedule, optimizer, num_warmup_steps=opt.warmup_steps,
                              num_training_steps=opt.steps)
    batches = _batches(config, opt.steps)
    began, tokens = None, 0
    for step, batch in enumerate(batches):
        if step == STEADY_SKIP:
            began = time.perf_counter()
        if began is not None:
            tokens += _tokens(batch)
        inputs = collate_qa(batch, pad_id=ids["pad_id"], eos_id=ids["eos_id"])
        loss = model(**inputs).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), opt.max_grad_norm or float("inf"))
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
    wall = time.perf_counter() - began
    return {"tokens_per_s": tokens / wall, "step_s": wall / (opt.steps - STEADY_SKIP)}


def hf_trainer(config, threads: int, workdir: Path) -> dict:
    """transformers' `Trainer` on the same model, batches, learning rate, schedule and clipping.

    Its own defaults otherwise (the optimizer included: `adamw_torch_fused` in transformers 5).
    Timed by a callback from the start of step `STEADY_SKIP` to the end of the last step.
    """
    from transformers import PrinterCallback, Trainer, TrainerCallback, TrainingArguments
    from transformers.utils import logging as hf_logging

    from palimpsest.models import build_model
    from palimpsest.train.batching import collate_qa

    hf_logging.set_verbosity_error()
    torch.set_num_threads(threads)
    opt, ids = config.optimisation, config.model
    # The dataset is our loop's batches, one per element (a loader batch of 1 is one of them), so
    # Trainer trains on exactly the examples and padding the other cases do (in its own shuffled order).
    batches = _batches(config, opt.steps)
    seen: list[int] = []  # tokens of each batch, in the order the steps take them

    def collate(one):
        (batch,) = one
        seen.append(_tokens(batch))
        return collate_qa(batch, pad_id=ids["pad_id"], eos_id=ids["eos_id"])

    clock: dict = {}

    class Timing(TrainerCallback):
        def on_step_begin(self, args, state, control, **kwargs):
            if state.global_step == STEADY_SKIP:
                clock["began"] = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step == opt.steps:
                clock["ended"] = time.perf_counter()

    arguments = TrainingArguments(
        output_dir=str(workdir / "trainer"), per_device_train_batch_size=1, max_steps=opt.steps,
        learning_rate=opt.lr, weight_decay=opt.weight_decay, lr_scheduler_type=opt.lr_schedule,
        warmup_steps=opt.warmup_steps, max_grad_norm=opt.max_grad_norm or 0.0, logging_strategy="no",
        save_strategy="no", report_to=[], use_cpu=not torch.cuda.is_available(), dataloader_num_workers=0,
        disable_tqdm=True, seed=0, remove_unused_columns=False)
    trainer = Trainer(model=build_model(ids), args=arguments, train_dataset=batches, data_collator=collate,
                      callbacks=[Timing()])
    trainer.remove_callback(PrinterCallback)  # its end-of-training metrics line
    trainer.train()
    shutil.rmtree(workdir / "trainer", ignore_errors=True)
    wall = clock["ended"] - clock["began"]
    return {"tokens_per_s": sum(seen[STEADY_SKIP:opt.steps]) / wall, "step_s": wall / (opt.steps - STEADY_SKIP),
            "optimizer": getattr(arguments.optim, "value", arguments.optim)}


# ----------------------------------------------------------------------------- sections


def measure_loop(spec, workdir: Path, use_ray: bool) -> list[Row]:
    """Section 1: tokens/s of our loop (no Ray; Ray Train, 1 worker) against bare PyTorch and `Trainer`."""
    bench = spec.benchmark
    document = train_document(bench, "bench-loop")
    _, prepared = prepared_case(document)
    config = prepared.worker_config
    with_ray = use_ray and bench.ray
    cases = {"bare PyTorch": lambda: bare_pytorch(config, bench.threads),
             "transformers Trainer": lambda: hf_trainer(config, bench.threads, workdir),
             "ours, no Ray": lambda: ours(document, workdir, use_ray=False)}
    runs: dict[str, list[dict]] = {case: [] for case in cases}
    if with_ray:
        runs["ours, Ray Train 1 worker"] = []
    names = list(cases)
    for repeat in range(bench.repeats):
        # Interleaved, and each repetition starts with another case: a slow spell of the machine
        # (or a process still winding down) hits every case alike.
        for case in names[repeat % len(names):] + names[:repeat % len(names)]:
            runs[case].append(cases[case]())
        if with_ray:
            runs["ours, Ray Train 1 worker"].append(ours(document, workdir, use_ray=True))
            time.sleep(2.0)  # Ray Train's actors wind down after fit() returns: not during the next case
    rows = [Row("loop", case, round(best([r["tokens_per_s"] for r in results], higher_is_better=True), 1),
                "tokens/s", note=f"best of {len(results)}") for case, results in runs.items()]
    rows[1].note += f"; optim {runs['transformers Trainer'][0]['optimizer']}"
    compare(rows, "ours, no Ray", "bare PyTorch", target=">= 0.95")
    rows.append(Row("loop", "ours, no Ray (against Trainer)", rows[2].value, "tokens/s"))
    compare(rows, "ours, no Ray (against Trainer)", "transformers Trainer", target=">= 1.0")
    compare(rows, "transformers Trainer", "bare PyTorch")
    if with_ray:
        compare(rows, "ours, Ray Train 1 worker", "ours, no Ray")
        fits = {case: best([r["fit_wall_s"] for r in runs[case]], higher_is_better=False)
                for case in ("ours, no Ray", "ours, Ray Train 1 worker")}
        rows.append(Row("loop", "Ray Train fit() start-up and teardown", round(
            fits["ours, Ray Train 1 worker"] - fits["ours, no Ray"], 2), "s",
            note=f"end to end: {fits['ours, Ray Train 1 worker']:.1f} s under Ray against "
                 f"{fits['ours, no Ray']:.1f} s without, for {bench.steps} steps"))
    else:
        rows.append(Row("loop", "ours, Ray Train 1 worker", None, "tokens/s", note="skipped: --no-ray or ray: false"))
    for row in rows:
        row.extra["parameters"] = runs["ours, no Ray"][0]["parameters"]["total"]
    return rows


def measure_deepspeed(spec, workdir: Path, use_ray: bool) -> list[Row]:
    """Section 2: steady step time of DeepSpeed ZeRO stages against DDP, same model and batch, N workers."""
    bench = spec.benchmark
    if not use_ray:
        return [Row("deepspeed", "ZeRO against DDP", None, "s/step", note="needs Ray (run without --no-ray)")]
    cases = {"DDP": {"backend": "ddp"}}
    cases.update({f"ZeRO-{stage}": {"backend": "deepspeed", "deepspeed": {"zero_stage": stage}}
                  for stage in bench.stages})
    runs: dict[str, list[dict]] = {}
    for _ in range(bench.repeats):
        for case, training in cases.items():
            document = train_document(bench, f"bench-{case.lower()}", training=training, workers=bench.workers)
            runs.setdefault(case, []).append(ours(document, workdir, use_ray=True))
    rows = [Row("deepspeed", case, round(best([r["step_s"] for r in results], higher_is_better=False), 5),
                "s/step", note=f"{bench.workers} workers, best of {len(results)}") for case, results in runs.items()]
    for case in cases:
        if case != "DDP":
            compare(rows, case, "DDP")
    return rows


def measure_private(spec, workdir: Path, use_ray: bool) -> list[Row]:
    """Section 3: cost per token of DP-SGD (each mode) and DP-LoRA against non-private training, one process.

    DP-SGD's batches are Poisson draws (their size varies around the batch size), so the
    ratios compare time per training token; s/step is in each row's note.
    """
    bench = spec.benchmark
    lora = {"lora": bench.lora.model_dump()}
    privacy = lambda mode: {"epsilon": bench.epsilon, "grad_sample_mode": mode}  # noqa: E731
    cases = {"non-private": train_document(bench, "bench-open")}
    cases.update({f"DP-SGD {mode}": train_document(bench, f"bench-dp-{mode}", privacy=privacy(mode))
                  for mode in bench.modes})
    cases["LoRA non-private"] = train_document(bench, "bench-lora", model=lora)
    cases[f"DP-LoRA {bench.lora_mode}"] = train_document(bench, "bench-dp-lora", model=lora,
                                                         privacy=privacy(bench.lora_mode))
    runs: dict[str, list[dict]] = {}
    for _ in range(bench.repeats):
        for case, document in cases.items():
            runs.setdefault(case, []).append(ours(document, workdir, use_ray=False))
    rows = []
    for case, results in runs.items():
        fastest = min(results, key=lambda r: r["token_s"])
        rows.append(Row("private", case, round(fastest["token_s"] * 1e6, 3), "µs/token",
                        note=f"{fastest['step_s'] * 1000:.1f} ms/step, best of {len(results)}",
                        extra={"trainable": fastest["parameters"]["trainable"]}))
    for mode in bench.modes:
        compare(rows, f"DP-SGD {mode}", "non-private")
    compare(rows, f"DP-LoRA {bench.lora_mode}", "LoRA non-private", target="<= 1.2")
    compare(rows, "LoRA non-private", "non-private")
    return rows
