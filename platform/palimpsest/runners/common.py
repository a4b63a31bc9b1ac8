"""What every LLM runner shares: tokenizer, worker-config pieces, and one `fit()` on Ray or in-process."""

from __future__ import annotations

import shutil
from pathlib import Path

from palimpsest.data import DataError, load_hf_qa, load_qa_file, qa_texts, train_bpe_tokenizer
from palimpsest.models import model_config
from palimpsest.runtime import RunFolder
from palimpsest.train.batching import PROMPT_TEMPLATE, tokenize_qa


def build_tokenizer(model_spec, examples, extra_texts=(), *, saved: str | Path | None = None):
    """The pretrained model's tokenizer, an explicit one, or a BPE trained on the data.

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


def load_dataset_spec(data) -> list:
    """Examples of a `file` or `hf` data section."""
    if data.source == "file":
        return load_qa_file(data.path, question_key=data.question_key, answer_key=data.answer_key)
    return load_hf_qa(data.name, split=data.split, subset=data.subset, data_files=data.data_files,
                      question_key=data.question_key, answer_key=data.answer_key)


def as_items(tokenizer, examples) -> list[tuple]:
    return [(it.prompt, it.answer) for it in tokenize_qa(tokenizer, examples)]


def text_items(tokenizer, texts) -> list[tuple]:
    """Plain sentences as items whose 'answer' is the whole sentence: their loss is the LM loss."""
    bos = (tokenizer.bos_token_id,) if tokenizer.bos_token_id is not None else ()
    return [(bos, tuple(tokenizer.encode(" " + t, add_special_tokens=False))) for t in texts]


def subsample(examples: list, cap: int | None) -> list:
    """At most `cap` examples, evenly spaced (deterministic)."""
    if cap is None or len(examples) <= cap:
        return examples
    step = len(examples) / cap
    return [examples[int(i * step)] for i in range(cap)]


def base_worker_config(spec, tokenizer) -> dict:
    return {
        "seed": spec.seed,
        "model": model_config(spec.model.model_dump(), vocab_size=len(tokenizer), pad_id=tokenizer.pad_token_id,
                              bos_id=tokenizer.bos_token_id, eos_id=tokenizer.eos_token_id, seed=spec.seed),
        "training": spec.training.model_dump(),
        "eval": spec.eval.model_dump(),
        "threads": max(1, int(spec.scaling.cpus_per_worker)),
    }


def fit(spec, config: dict, folder: RunFolder, run_name: str, *, use_ray: bool) -> tuple[dict, list[tuple[str, dict]]]:
    """Run the shared loop once: N Ray Train workers, or this process.

    Returns rank 0's output and the reported checkpoints as (directory, metrics).
    """
    storage = Path(spec.storage_path).resolve() if spec.storage_path else folder.path / "ray"
    if not use_ray:
        from palimpsest.train.loop import run_training
        from palimpsest.train.session import LocalSession

        # A rerun of an interrupted folder picks up its last checkpoint (Ray does the same
        # by itself when a run name and storage path are reused).
        session = LocalSession(storage / run_name, resume_from=config.get("resume_from") or latest_checkpoint(storage / run_name))
        output = run_training(config, session)
        return output, session.checkpoints

    from ray.train import CheckpointConfig, FailureConfig, LoggingConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from palimpsest.train.loop import train_loop_per_worker

    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config=config,
        scaling_config=ScalingConfig(num_workers=spec.scaling.num_workers, use_gpu=spec.scaling.use_gpu,
                                     resources_per_worker={"CPU": spec.scaling.cpus_per_worker}),
        run_config=RunConfig(
            name=run_name,  # unique per run: a reused name would resume an old run
            storage_path=str(storage),
            failure_config=FailureConfig(max_failures=spec.max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=None),  # every task end is exported
            # Ray Train logs every report at INFO; the loop's progress lines say enough.
            logging_config=LoggingConfig(log_level="WARNING"),
        ),
    )
    result = trainer.fit()
    checkpoints = [(ckpt.path, metrics) for ckpt, metrics in (result.best_checkpoints or [])]
    return result.return_value, checkpoints


def latest_checkpoint(run_dir: Path) -> str | None:
    """The newest checkpoint directory of a run (names sort in time order), if any."""
    found = sorted(p for p in Path(run_dir).glob("checkpoint_*") if p.is_dir())
    return str(found[-1]) if found else None


def export_checkpoint(checkpoint_dir: str, target: Path, tokenizer) -> None:
    """Copy a reported checkpoint's transformers files (not the trainer state) and add the tokenizer."""
    shutil.copytree(checkpoint_dir, target, ignore=shutil.ignore_patterns("trainer_state.pt", "reported_metrics.json"), dirs_exist_ok=True)
    tokenizer.save_pretrained(str(target))
