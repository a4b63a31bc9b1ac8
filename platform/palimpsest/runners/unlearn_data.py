"""An unlearn job's data as points of its request sequence: fact-world splits or TOFU-format files.

After request k, "forget" is every item requested so far and "retain" what remains of
the training data; each point carries the TOFU-format sets its models are scored on.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from palimpsest.data import DataError, QAExample, load_qa_file
from palimpsest.data.factworld import percent_ceil
from palimpsest.runners.common import subsample
from palimpsest.runners.train import fact_world
from palimpsest.spec.unlearn import UnlearnJob
from palimpsest.unlearn.ledger import content_hash


def _key(example: QAExample) -> tuple[str, str]:
    return example.question, example.answer


@dataclass
class Request:
    id: str
    items: list[QAExample]  # training examples to forget
    items_hash: str


@dataclass
class Point:
    """The state after request k: what is forgotten, what remains, and the sets each model is scored on."""

    request: Request
    forgotten: list[QAExample]
    remaining: list[QAExample]
    sets: dict[str, list[QAExample]]  # forget / retain / holdout, TOFU format


@dataclass
class PreparedUnlearn:
    tokenizer: object
    train: list[QAExample]
    points: list[Point]
    base_model: dict  # what the target is trained from (model_config)
    recipe: dict  # what the trained models depend on besides their data (the cache key's part)
    notes: list[str] = field(default_factory=list)
    configs: dict[str, list[dict]] = field(default_factory=dict)  # per method label, per point: the ledger's config
    idk: list[tuple[int, ...]] = field(default_factory=list)  # the idk methods' "I don't know" answers, as token ids
    # Fact world: the public facts (real authors, world facts) the base learns in its pre-training stage.
    public: list[QAExample] = field(default_factory=list)


def _tofu_file(folder: Path, name: str) -> Path | None:
    for suffix in (".json", ".jsonl"):
        if (folder / f"{name}{suffix}").is_file():
            return folder / f"{name}{suffix}"
    return None


def _load_tofu(spec: UnlearnJob) -> tuple[list[QAExample], list[QAExample], dict, list[QAExample] | None]:
    """(training set, holdout, the request splits' loaders, retain evaluation items) from a TOFU-format folder."""
    folder = Path(spec.data.path)
    names = sorted(p.stem for p in folder.iterdir() if p.suffix in (".json", ".jsonl"))
    full = _tofu_file(folder, "full")
    if full is not None:
        train = load_qa_file(full)
    else:
        parts = [n for n in names if n.startswith(("forget", "retain")) and not n.endswith("_perturbed")]
        if not parts:
            raise DataError(f"data.path: {folder} has no full.json and no forget*/retain* files (TOFU format)")
        train = list({_key(e): e for n in parts for e in load_qa_file(_tofu_file(folder, n))}.values())
    holdout_file = _tofu_file(folder, f"{spec.data.holdout}_perturbed") or _tofu_file(folder, spec.data.holdout)
    if holdout_file is None:
        raise DataError(f"data.holdout: no {spec.data.holdout}.json in {folder} (files: {', '.join(names)})")
    retain_file = _tofu_file(folder, "retain_perturbed")
    public = {}  # TOFU's real-authors and world-facts splits, when the folder has them (the real release does)
    for split, name in (("real_authors", "real_authors_perturbed"), ("world_facts", "world_facts_perturbed")):
        found = _tofu_file(folder, name)
        if found is not None:
            items = [e for e in load_qa_file(found) if e.perturbed_answers]
            if not items:
                raise DataError(f"data.path: {found.name} has no item with perturbed_answer (TOFU format)")
            public[split] = items
    return train, load_qa_file(holdout_file), {"folder": folder, "names": names, "public": public}, \
        (load_qa_file(retain_file) if retain_file else None)


def _request_items(spec: UnlearnJob, index: int, train_keys: dict, context: dict) -> list[QAExample]:
    """The training examples request `index` names (its eval versions are looked up later)."""
    request = spec.requests[index]
    where = f"requests[{index}] ({request.id})"
    if request.path is not None:
        wanted = load_qa_file(request.path)
    elif spec.data.source == "factworld":
        trainable = context["trainable"]
        if request.split is not None:
            if request.split not in ("forget01", "forget05", "forget10"):
                raise DataError(f"{where}.split: fact-world requests name forget01, forget05 or forget10, "
                                f"got {request.split!r}")
            count = percent_ceil(len(trainable), int(request.split[-2:]))
            people = trainable[:count]
            context["cursor"] = max(context["cursor"], count)
        else:
            count = percent_ceil(len(trainable), request.percent)
            start = context["cursor"]
            if start + count > len(trainable) - 1:
                raise DataError(f"{where}.percent: the next {request.percent}% ({count} people) would leave no one "
                                f"to retain ({start} of {len(trainable)} trainable people are already requested)")
            people = trainable[start : start + count]
            context["cursor"] = start + count
        wanted = context["world"].facts_of(people)
    else:
        if request.percent is not None:
            raise DataError(f"{where}.percent: only fact-world requests take a percent; name a split file")
        found = _tofu_file(context["folder"], request.split)
        if found is None:
            raise DataError(f"{where}.split: no {request.split}.json in {context['folder']} "
                            f"(files: {', '.join(context['names'])})")
        wanted = load_qa_file(found)
    missing = [e for e in wanted if _key(e) not in train_keys]
    if missing:
        raise DataError(f"{where}: {len(missing)} of its {len(wanted)} items were never trained on (not in the "
                        f"training data), e.g. {missing[0].question!r}")
    if not wanted:
        raise DataError(f"{where}: no items")
    return [train_keys[_key(e)] for e in wanted]


def _with_answers(examples: list[QAExample], versions: dict) -> list[QAExample]:
    """Each example's TOFU-format version (paraphrased and perturbed answers), where one exists."""
    found = [versions.get(_key(e), e) for e in examples]
    return [e for e in found if e.paraphrased_answer and e.perturbed_answers]


def load_points(spec: UnlearnJob) -> tuple[list[QAExample], list[Point], list[QAExample], list[QAExample]]:
    """(training set, one Point per request, the texts a fitted tokenizer may see, the fact world's public facts
    its base pre-trains on).

    Raises:
        DataError: unreadable data, an unknown split, a request of untrained items, nothing left to retain.
    """
    versions: dict = {}
    retain_eval = None
    if spec.data.source == "factworld":
        world = fact_world(spec.data, spec.seed)
        holdout_people, trainable = world.tofu_order()
        train, holdout = world.facts_of(trainable), world.facts_of(holdout_people)
        public = {split: items for split, items in
                  world.public_facts(spec.data.real_authors, spec.data.world_facts).items() if items}
        context = {"world": world, "trainable": trainable, "cursor": 0, "public": public}
        # the generator's vocabulary (see runners/train.py), the public facts' included
        tokenizer_texts = [*world.facts, *(e for items in public.values() for e in items)]
    else:
        train, holdout, context, retain_eval = _load_tofu(spec)
        folder = context["folder"]
        for name in context["names"]:  # TOFU keeps paraphrased / perturbed answers in *_perturbed files
            if name.endswith("_perturbed"):
                versions.update({_key(e): e for e in load_qa_file(_tofu_file(folder, name))})
        tokenizer_texts = train
    if not train:
        raise DataError("data: the training set is empty")
    train_keys = {_key(e): e for e in train}
    holdout = _with_answers(holdout, versions)
    if not holdout:
        raise DataError("data.holdout: no holdout item has paraphrased_answer and perturbed_answer (TOFU format)")
    cap = spec.eval.max_examples
    points, forgotten = [], {}
    for index, request in enumerate(spec.requests):
        items = _request_items(spec, index, train_keys, context)
        forgotten.update({_key(e): e for e in items})
        remaining = [e for e in train if _key(e) not in forgotten]
        if not remaining:
            raise DataError(f"requests[{index}] ({request.id}): nothing would remain to retain")
        gone = list(forgotten.values())
        forget_eval = _with_answers(gone, versions)
        if not forget_eval:
            raise DataError(f"requests[{index}] ({request.id}): its items lack paraphrased_answer / perturbed_answer; "
                            "forget quality needs them (TOFU keeps them in <split>_perturbed.json)")
        retain_pool = [e for e in (retain_eval or []) if _key(e) not in forgotten] or _with_answers(remaining, versions)
        sets = {"forget": subsample(forget_eval, cap), "retain": subsample(retain_pool, cap),
                "holdout": subsample(holdout, cap),
                **{split: subsample(items, cap) for split, items in context.get("public", {}).items()}}
        points.append(Point(Request(request.id, items, content_hash(items)), gone, remaining, sets))
    # What the base must know before the target is fine-tuned: the fact world's invented public facts, or a TOFU
    # folder's real authors and world facts when the model starts from a preset's random init (a pretrained LLM
    # knows the real ones, as TOFU's base does).
    pretraining = [e for items in context.get("public", {}).values() for e in items] \
        if spec.data.source == "factworld" or not spec.model.pretrained else []
    return train, points, tokenizer_texts, pretraining
