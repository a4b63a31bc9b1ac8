"""Read and write question/answer data in TOFU's format, from files or `datasets`.

TOFU's field names are `question`, `answer`, `paraphrased_answer` and
`perturbed_answer` (a list); its `.json` files are in fact JSON Lines. The same
loader therefore reads our exported fact world and the real TOFU files.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Iterator
from pathlib import Path

from palimpsest.atomic import atomic_write_text

from .factworld import QAExample

__all__ = ["DataError", "export_tofu", "export_tofu_folder", "load_hf_qa", "load_qa_file"]

ALLOWED_EXTENSIONS = (".json", ".jsonl", ".parquet")


class DataError(ValueError):
    """Question/answer data that cannot be read: missing file, bad format, missing key."""


def export_tofu(examples: Iterable[QAExample], path: str | os.PathLike) -> None:
    """Write examples as JSON Lines with TOFU's field names, atomically.

    Each line holds question, answer, paraphrased_answer, perturbed_answer (list of
    str), plus entity and attribute when they are set.
    """
    path = Path(path)
    lines = []
    for example in examples:
        record = {
            "question": example.question,
            "answer": example.answer,
            "paraphrased_answer": example.paraphrased_answer,
            "perturbed_answer": list(example.perturbed_answers),
        }
        if example.entity is not None:
            record["entity"] = example.entity
        if example.attribute is not None:
            record["attribute"] = example.attribute
        lines.append(json.dumps(record, ensure_ascii=False, sort_keys=True) + "\n")
    atomic_write_text(path, "".join(lines))


def export_tofu_folder(world, folder: str | os.PathLike, *, retain_eval: int = 400, real_authors: int = 100,
                       world_facts: int = 100) -> list[Path]:
    """Write a fact world as the real TOFU's files, so `data: {source: tofu}` reads it as it reads TOFU.

    As TOFU lays them out: `full`, `forgetNN` and `retainNN` hold question and answer only;
    `forgetNN_perturbed`, `retain_perturbed` (the first `retain_eval` retain90 items) and
    `holdout10_perturbed` add the paraphrased and perturbed answers; `holdout10` is the
    people never in `full`; `real_authors` / `world_facts` (question and answer) and their
    `_perturbed` files (with the wrong options) are the world's public facts
    (`FactWorld.public_facts`), left out when their count is 0. Returns the files written.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    splits = world.tofu_splits()
    plain = {"full": [e for e in world.facts if e not in set(splits["holdout"])], "holdout10": splits["holdout"]}
    plain.update({name: splits[name] for name in ("forget01", "forget05", "forget10", "retain90", "retain95",
                                                   "retain99")})
    rich = {f"{name}_perturbed": splits[name] for name in ("forget01", "forget05", "forget10")}
    rich.update({"retain_perturbed": splits["retain90"][:retain_eval], "holdout10_perturbed": splits["holdout"]})
    for name, examples in world.public_facts(real_authors, world_facts).items():
        if examples:
            plain[name] = examples
            rich[f"{name}_perturbed"] = examples
    written = []
    for name, examples in plain.items():
        lines = "".join(json.dumps({"question": e.question, "answer": e.answer}, ensure_ascii=False) + "\n"
                        for e in examples)
        atomic_write_text(folder / f"{name}.json", lines)
        written.append(folder / f"{name}.json")
    for name, examples in rich.items():
        export_tofu(examples, folder / f"{name}.json")
        written.append(folder / f"{name}.json")
    return written


def load_qa_file(path: str | os.PathLike, *, question_key: str = "question",
                 answer_key: str = "answer", person_key: str | None = None) -> list[QAExample]:
    """Load question/answer examples from a .json, .jsonl or .parquet file.

    A .json file may be a JSON list of objects or JSON Lines (as TOFU's are).
    `paraphrased_answer`, `perturbed_answer`, `entity` and `attribute` are read when present.

    Args:
        path: the file.
        question_key: field holding the question.
        answer_key: field holding the answer.
        person_key: field naming the person an example is about (kept as `entity`: person-level
            privacy samples people by it); default: `entity`, `author` or `person`, when present.

    Raises:
        DataError: no such file, an unknown extension, malformed content, or a record
            without a required key (the message names the file and the line or record).
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in ALLOWED_EXTENSIONS:
        allowed = ", ".join(ALLOWED_EXTENSIONS)
        raise DataError(f"{path}: unknown extension {path.suffix or '(none)'!r}; allowed: {allowed}")
    if not path.exists():
        raise DataError(f"no such file: {path}")
    if suffix == ".parquet":
        records = _parquet_records(path)
    else:
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as err:
            raise DataError(f"{path}: cannot read: {err}") from err
        records = _json_records(path, text) if suffix == ".json" else _json_lines_records(path, text)
    return [_to_example(record, f"{path}: {where}", question_key, answer_key, person_key) for where, record in records]


def load_hf_qa(name: str, *, split: str = "train", subset: str | None = None, question_key: str = "question",
               answer_key: str = "answer", data_files=None, cache_dir: str | None = None,
               person_key: str | None = None) -> list[QAExample]:
    """Load question/answer examples with `datasets.load_dataset(name, subset, split=split, ...)`.

    Works for hub names and for packaged builders such as "json" or "parquet" with
    `data_files`.

    Args:
        name: dataset name or builder ("json", "parquet", ...).
        split: split to read.
        subset: configuration name (TOFU's are "forget01", "retain99", ...).
        question_key: column holding the question.
        answer_key: column holding the answer.
        person_key: column naming the person an example is about (see `load_qa_file`).
        data_files: passed to `load_dataset` for packaged builders.
        cache_dir: where `datasets` caches; its default when None.

    Raises:
        DataError: the dataset cannot be loaded, lacks a column, or has a bad row.
    """
    import datasets

    label = f"dataset {name!r}" + (f" subset {subset!r}" if subset else "") + f" split {split!r}"
    try:
        dataset = datasets.load_dataset(name, subset, split=split, data_files=data_files, cache_dir=cache_dir)
    except Exception as err:  # the library raises many types; callers need one
        raise DataError(f"{label}: cannot load: {type(err).__name__}: {err}") from err
    missing = [key for key in (question_key, answer_key, person_key) if key and key not in dataset.column_names]
    if missing:
        raise DataError(f"{label}: missing column(s) {missing}; columns are {dataset.column_names}")
    return [_to_example(row, f"{label}: record {i}", question_key, answer_key, person_key)
            for i, row in enumerate(dataset, 1)]


def _json_records(path: Path, text: str) -> Iterator[tuple[str, object]]:
    """A JSON list of objects, one JSON object, or else JSON Lines."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError:
        return _json_lines_records(path, text)  # more than one value: JSON Lines
    if isinstance(data, dict):  # JSON Lines with a single line
        return iter([("line 1", data)])
    if isinstance(data, list):
        return ((f"record {i}", record) for i, record in enumerate(data, 1))
    raise DataError(f"{path}: expected a JSON list of objects or JSON Lines, got a JSON {type(data).__name__}")


def _json_lines_records(path: Path, text: str) -> Iterator[tuple[str, object]]:
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            yield f"line {number}", json.loads(line)
        except json.JSONDecodeError as err:
            raise DataError(f"{path}: line {number}: not valid JSON: {err.msg}") from err


def _parquet_records(path: Path) -> Iterator[tuple[str, object]]:
    import pyarrow
    import pyarrow.parquet as pq

    try:
        rows = pq.read_table(path).to_pylist()
    except (OSError, pyarrow.ArrowException) as err:
        raise DataError(f"{path}: cannot read as parquet: {err}") from err
    return ((f"record {i}", row) for i, row in enumerate(rows, 1))


PERSON_KEYS = ("entity", "author", "person")  # read as the example's person when no person key is named


def _to_example(record: object, where: str, question_key: str, answer_key: str,
                person_key: str | None = None) -> QAExample:
    """One record to a QAExample; `where` names the file and line/record for errors."""
    if not isinstance(record, dict):
        raise DataError(f"{where}: expected an object, got {type(record).__name__}")
    for key in (question_key, answer_key):
        if key not in record:
            raise DataError(f"{where}: missing key {key!r} (keys present: {sorted(record)})")
        if not isinstance(record[key], str):
            raise DataError(f"{where}: {key!r} must be a string, got {type(record[key]).__name__}")
    paraphrase = record.get("paraphrased_answer")
    if paraphrase is not None and not isinstance(paraphrase, str):
        raise DataError(f"{where}: 'paraphrased_answer' must be a string, got {type(paraphrase).__name__}")
    perturbed = record.get("perturbed_answer")
    if perturbed is None:
        perturbed = ()
    elif isinstance(perturbed, str):  # some exports store a single wrong answer
        perturbed = (perturbed,)
    elif isinstance(perturbed, (list, tuple)) and all(isinstance(p, str) for p in perturbed):
        perturbed = tuple(perturbed)
    else:
        raise DataError(f"{where}: 'perturbed_answer' must be a list of strings")
    optional = {}
    if person_key is not None and person_key not in record:
        raise DataError(f"{where}: missing key {person_key!r} (data.person_field; keys present: {sorted(record)})")
    person = person_key or next((key for key in PERSON_KEYS if record.get(key) is not None), "entity")
    for field, key in (("entity", person), ("attribute", "attribute")):
        value = record.get(key)
        if isinstance(value, int) and not isinstance(value, bool) and field == "entity":
            value = str(value)  # a numeric person id
        if value is not None and not isinstance(value, str):
            raise DataError(f"{where}: {key!r} must be a string, got {type(value).__name__}")
        optional[field] = value
    return QAExample(question=record[question_key], answer=record[answer_key], paraphrased_answer=paraphrase,
                     perturbed_answers=perturbed, **optional)
