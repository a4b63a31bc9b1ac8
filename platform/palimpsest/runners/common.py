"""What every LLM runner shares: tokenizer, worker-config pieces, and one `fit()` on Ray or in-process."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from palimpsest.catalog import methods_of
from palimpsest.data import DataError, load_hf_qa, load_qa_file, qa_texts, train_bpe_tokenizer
from palimpsest.models import model_config
from palimpsest.run_folder import RunFolder
from palimpsest.train.batching import PROMPT_TEMPLATE, TokenizedQA, tokenize_qa
from palimpsest.train.checkpoint import POSITION_FILE
from palimpsest.manifest import LEFT_ON_STORAGE
from palimpsest.train.flops import train_flops
from palimpsest.train.config import NAIVE, Evaluation, LoopConfig, MethodRun, Optimisation


def build_tokenizer(model_spec, examples, extra_texts=(), *, saved: str | Path | None = None):
    """The pretrained model's tokenizer, an explicit one, or a BPE trained on the training data.

    `examples` and `extra_texts` must be training data only: a tokenizer fitted to the
    evaluation sets would change the trained model (and leak their text into it).

    `saved`: a run folder's own tokenizer (resuming a run reuses exactly its token ids).

    Raises:
        DataError: the model folder or tokenizer cannot be loaded.
    """
    source = str(saved) if saved else (model_spec.tokenizer or model_spec.pretrained)
    if model_spec.pretrained and Path(model_spec.pretrained).is_dir() \
            and not (Path(model_spec.pretrained) / "config.json").is_file():
        raise DataError(f"model.pretrained: {model_spec.pretrained} has no config.json (not a transformers model folder)")
    if source:
        from transformers import AutoTokenizer

        try:
            tokenizer = AutoTokenizer.from_pretrained(source)
        except (OSError, ValueError) as error:
            raise DataError(f"model: cannot load a tokenizer from {source}: {error}") from None
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
        return tokenizer
    # Prompts are part of what the model reads: a BPE that has seen them spends fewer tokens.
    prompts = [PROMPT_TEMPLATE.format(question=e.question) for e in examples]
    return train_bpe_tokenizer(qa_texts(examples) + prompts + list(extra_texts), vocab_size=model_spec.vocab_size)


def method_runs(family: str, methods) -> list[MethodRun]:
    """A job's `methods` entries as MethodRuns, parameters checked and defaults filled in.

    Raises:
        DataError: a parameter is unknown or out of range (`validate` reports the same).
    """
    known = methods_of(family)
    runs, problems = [], []
    for i, method in enumerate(methods):
        info = known[method.name]
        problems += [f"methods[{i}].params.{name}: {message}" for name, message in info.check_params(method.params)]
        runs.append(MethodRun(info.name, info.module, info.implementation, info.resolve(method.params)))
    if problems:
        raise DataError("\n".join(problems))
    return runs


def load_dataset_spec(data) -> list:
    """Examples of a `file` or `hf` data section."""
    if data.source == "file":
        return load_qa_file(data.path, question_key=data.question_key, answer_key=data.answer_key,
                            person_key=data.person_field)
    return load_hf_qa(data.name, split=data.split, subset=data.subset, data_files=data.data_files,
                      question_key=data.question_key, answer_key=data.answer_key, person_key=data.person_field)


def text_items(tokenizer, texts) -> list[TokenizedQA]:
    """Plain sentences as items whose 'answer' is the whole sentence: their loss is the LM loss."""
    bos = (tokenizer.bos_token_id,) if tokenizer.bos_token_id is not None else ()
    return [TokenizedQA(bos, tuple(tokenizer.encode(" " + t, add_special_tokens=False))) for t in texts]


def subsample(examples: list, cap: int | None) -> list:
    """At most `cap` examples, evenly spaced (deterministic)."""
    if cap is None or len(examples) <= cap:
        return examples
    step = len(examples) / cap
    return [examples[int(i * step)] for i in range(cap)]


def loop_config(spec, tokenizer, *, tasks, eval_sets, task_eval_names=None, general=(), methods=(NAIVE,),
                periodic: str = "all", baseline: str | None = None) -> LoopConfig:
    """The runner → loop contract for `spec` (the one place a LoopConfig is built from a spec)."""
    training = spec.training
    privacy = getattr(spec, "privacy", None)
    plan = people = None
    if privacy is not None:
        from palimpsest.privacy import BudgetError, make_plan

        from palimpsest.privacy import people_of

        try:
            if privacy.unit == "person":
                people, total = people_of(tasks)
                plan = make_plan(privacy, task_sizes=[len(groups) for groups in people],
                                 batch_size=training.batch_size, steps_per_task=training.steps, total=total)
            else:
                plan = make_plan(privacy, task_sizes=[len(task) for task in tasks], batch_size=training.batch_size,
                                 steps_per_task=training.steps)
        except BudgetError as error:
            raise DataError(str(error)) from None
    return LoopConfig(
        seed=spec.seed,
        model=model_config(spec.model.model_dump(), vocab_size=len(tokenizer), pad_id=tokenizer.pad_token_id,
                           bos_id=tokenizer.bos_token_id, eos_id=tokenizer.eos_token_id, seed=spec.seed),
        optimisation=Optimisation(
            steps=training.steps, batch_size=training.batch_size, grad_accum=training.grad_accum, lr=training.lr,
            weight_decay=training.weight_decay, warmup_steps=training.warmup_steps,
            lr_schedule=training.lr_schedule, max_grad_norm=training.max_grad_norm, backend=training.backend,
            zero_stage=training.deepspeed.zero_stage, precision=training.precision,
            activation_checkpointing=training.activation_checkpointing, compile=training.compile,
            packing=training.packing, packing_row_tokens=training.packing_row_tokens,
            log_every=training.log_every, checkpoint_every=training.checkpoint_every),
        evaluation=Evaluation(every=spec.eval.eval_every, batch_size=spec.eval.batch_size, periodic=periodic,
                              baseline=baseline),
        tasks=[tokenize_qa(tokenizer, task) for task in tasks],
        eval_sets=eval_sets,
        task_eval_names=task_eval_names,
        general=list(general),
        methods=list(methods),
        privacy=plan,
        task_people=people if plan is not None and plan.unit == "person" else None,
        threads=max(1, int(spec.scaling.cpus_per_worker)),
    )


def training_cost(result: dict, steps: int) -> dict:
    """A method's cost: training wall time, tokens, 6·N·D FLOPs (Kaplan et al., 2020), seconds per step,
    and the evaluation's wall time apart (`eval_wall_s`: not part of what the method costs).

    The FLOPs are the non-private estimate, so a private run's lower FLOP/s is its DP
    overhead (per-example gradients, clipping, noise).
    """
    flops = train_flops(result["parameters"]["total"], result["train_tokens"])
    wall = result["wall_s"]
    return {"wall_s": round(wall, 3), "train_tokens": result["train_tokens"], "train_flops": flops,
            "step_s": round(wall / max(steps, 1), 4), "flop_per_s": round(flops / wall, 1) if wall > 0 else None,
            "eval_wall_s": round(result.get("eval_wall_s", 0.0), 3), **steady_throughput(result)}


def steady_throughput(result: dict) -> dict:
    """Tokens/s and s/step over the steps after each task's warm-up (`train.loop.STEADY_SKIP`)."""
    wall, steps = result.get("steady_wall_s", 0.0), result.get("steady_steps", 0)
    if not steps or wall <= 0:
        return {}
    return {"steady_tokens_per_s": round(result["steady_tokens"] / wall, 1), "steady_step_s": round(wall / steps, 5),
            "steady_steps": steps}


def fit(spec, config: LoopConfig, folder: RunFolder, stage: str = "", *, use_ray: bool,
        progress=None) -> tuple[dict, list[tuple[str, dict]]]:
    """Run the shared loop once: N Ray Train workers, or this process.

    `stage`: which of a job's fits this is (an unlearn job's pretrain, target, deployed, retain,
    unlearn): its checkpoints are the Ray Train run `<run folder>-<stage>`, and the progress
    lines and display name it.

    `progress`: a Ray Train callback that passes the loop's reports on (a search's trial
    reports them to Ray Tune: `palimpsest.tune.TrialProgress`).

    Returns rank 0's output and the reported checkpoints as (directory, metrics).
    """
    from palimpsest.storage import RunStorage

    run_name = f"{folder.path.name}-{stage}" if stage else folder.path.name
    config = config.with_(stage=stage)
    storage = RunStorage(spec.storage_path, folder.path, run_name)
    # A URI's checkpoints are read through the run folder's mirror: whole ones for a run without
    # Ray (it resumes from there), without the trainer state under Ray (its workers read the bucket).
    local = storage.pull(lean=use_ray)
    if not use_ray:
        from palimpsest.train.loop import run_training
        from palimpsest.train.session import LocalSession

        # A rerun of an interrupted folder picks up its last checkpoint (Ray does the same
        # by itself when a run name and storage path are reused).
        session = LocalSession(local, resume_from=config.resume_from or latest_checkpoint(local))
        try:
            output = run_training(config, session)
        finally:  # what an interrupted run saved reaches storage too
            storage.push()
        return output, reported_checkpoints(local)

    from ray.train import CheckpointConfig, FailureConfig, LoggingConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from palimpsest.train.loop import train_loop_per_worker

    # Ray resumes by itself from the checkpoints its controller registered; one reported in
    # the last seconds before an interrupt may not be registered yet, so name the newest
    # (by its URI when storage is one: workers on any node read it from there).
    if not config.resume_from:
        config = config.with_(resume_from=storage.reference(latest_checkpoint(local)))
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config=config,
        scaling_config=ScalingConfig(num_workers=spec.scaling.num_workers, use_gpu=spec.scaling.use_gpu,
                                     resources_per_worker=spec.scaling.worker_resources()),
        run_config=RunConfig(
            name=run_name,  # unique per run: a reused name would resume an old run
            storage_path=storage.ray_path,
            failure_config=FailureConfig(max_failures=spec.max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=None),  # every task end is exported
            # Ray Train logs every report at INFO; the loop's progress lines say enough.
            logging_config=LoggingConfig(log_level="WARNING"),
            callbacks=[progress] if progress is not None else None,
        ),
    )
    result = trainer.fit()
    return result.return_value, reported_checkpoints(storage.pull(lean=True))


# Files a checkpoint holds for the trainer, not for users of the exported model.
TRAINER_ONLY_FILES = ("trainer_state.pt", "reported_metrics.json", "checkpoint_manifest*.json", POSITION_FILE,
                      LEFT_ON_STORAGE)


def reported_checkpoints(run_dir: Path) -> list[tuple[str, dict]]:
    """Every complete checkpoint of a run, oldest first, with what it was reported with.

    Read from the storage itself rather than from Ray's registry, so a checkpoint of an
    earlier, interrupted attempt counts too.
    """
    found = []
    for directory in sorted(p for p in Path(run_dir).glob("checkpoint_*") if p.is_dir()):
        position = directory / POSITION_FILE
        if position.is_file() and _complete(directory):
            found.append((str(directory), json.loads(position.read_text())))
    return found


def _complete(directory: Path) -> bool:
    from palimpsest.manifest import CheckpointCorruptError, verify_checkpoint

    try:
        # A copy a crash cut short may lack its manifest too: demand one.
        return verify_checkpoint(directory, require_manifest=True)
    except (CheckpointCorruptError, FileNotFoundError):  # a copy cut short by a crash: never resume from it
        return False


def latest_checkpoint(run_dir: Path) -> str | None:
    """The newest complete checkpoint directory of a run (names sort in time order), if any."""
    found = [p for p in sorted(Path(run_dir).glob("checkpoint_*")) if p.is_dir() and _complete(p)]
    return str(found[-1]) if found else None


def export_checkpoint(checkpoint_dir: str, target: Path, tokenizer) -> None:
    """Copy a reported checkpoint's transformers files (not the trainer state) and add the tokenizer."""
    # copyfile, not copy2: the exported model gets the umask's modes, not a private run's owner-only ones.
    shutil.copytree(checkpoint_dir, target, ignore=shutil.ignore_patterns(*TRAINER_ONLY_FILES), dirs_exist_ok=True,
                    copy_function=shutil.copyfile)
    tokenizer.save_pretrained(str(target))
