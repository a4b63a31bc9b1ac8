"""Load a YAML job spec (with `--set` overrides) into a typed spec, or report every problem at once."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal, get_args, get_origin

import yaml
from pydantic import BaseModel, ValidationError

from palimpsest.spec.common import SpecError, _suggest
from palimpsest.spec.bench import BENCH_TYPES
from palimpsest.kinds import KINDS
from palimpsest.spec.rules import cross_problems
from palimpsest.spec.tuning import corner_values, metric_problems, with_values

class _SpecLoader(yaml.SafeLoader):
    """YAML as PyYAML's safe loader reads it, but with YAML 1.2 floats: `1e-3` is a number,
    not the string '1e-3' (YAML 1.1 wants a dot: 1.0e-3). Specs validate strictly."""


_SpecLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*(?:\.[0-9_]*)?|\.[0-9_]+)[eE][-+]?[0-9]+$"),
    list("-+0123456789."),
)


def load_yaml(text: str) -> Any:
    """Parse a spec document or a `--set` value."""
    return yaml.load(text, Loader=_SpecLoader)  # noqa: S506 - a SafeLoader subclass


def apply_overrides(document: dict, overrides: list[str]) -> list[str]:
    """Apply `a.b=v` overrides in place (v parsed as YAML); return problems found."""
    problems = []
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key or any(not part for part in key.split(".")):
            problems.append(f"--set {item}: expected KEY.PATH=VALUE")
            continue
        try:
            value = load_yaml(raw) if raw else ""
        except yaml.YAMLError:
            value = raw
        node = document
        parts = key.split(".")
        for part in parts[:-1]:
            if not isinstance(node.get(part), dict):
                node[part] = {}
            node = node[part]
        node[parts[-1]] = value
    return problems


def parse_spec(document: Any, *, origin: str = "spec") -> BaseModel:
    """Validate a parsed YAML document into a typed job spec.

    Raises:
        SpecError: every problem, one line each, as '<origin>: <field.path>: <message>'.
    """
    if not isinstance(document, dict):
        raise SpecError([f"{origin}: expected a mapping of fields at the top level, got {type(document).__name__}"])
    kind = document.get("kind")
    if kind is None:
        raise SpecError([f"{origin}: kind: required field missing; allowed: {', '.join(KINDS)}"])
    if not isinstance(kind, str) or kind not in KINDS:
        raise SpecError([f"{origin}: kind: unknown job kind '{kind}'" + _suggest(kind, KINDS)])
    model_cls = KINDS[kind].spec
    problems = cross_problems(kind, document)  # every cross-section rule, whatever else is wrong
    try:
        spec = model_cls.model_validate(document)
    except ValidationError as err:
        problems = _describe(err, model_cls) + problems
    if not problems and getattr(spec, "tune", None) is not None:
        problems = tune_problems(spec)
    if not problems and kind == "bench":
        problems = _bench_job_problems(spec)
    if problems:
        raise SpecError([f"{origin}: {line}" for line in dict.fromkeys(problems)])
    return spec


def _bench_job_problems(spec) -> list[str]:
    """An unlearn benchmark names an unlearn job spec: it must load (with its `set:`) and be one."""
    problems = []
    for i, bench in enumerate(spec.benchmarks):
        if bench.type != "unlearn":
            continue
        try:
            job = load_spec(Path(bench.job), [f"{key}={value}" for key, value in bench.set.items()])
        except SpecError as error:
            problems.append(f"benchmarks.{i}.unlearn: {bench.job} (with set): " + "; ".join(error.problems))
            continue
        if job.kind != "unlearn":
            problems.append(f"benchmarks.{i}.unlearn: job: {bench.job} is a {job.kind} job; an unlearn job is needed")
    return problems


def base_document(spec) -> dict:
    """The resolved job without its tune section: what each trial of a search starts from (the kind's own)."""
    return spec.search_document()


def tune_problems(spec) -> list[str]:
    """The tune section against the job: its objectives, and every spec its space can reach at its ends."""
    problems = metric_problems(spec)
    if problems:
        return problems
    base = base_document(spec)
    for path, dimension in spec.tune.space.items():
        (distribution, _), = dimension.items()
        for value in corner_values(dimension):
            try:
                document = with_values(base, {path: value})
            except KeyError as error:
                problems.append(f"tune.space.{path}: {error.args[0]}")
                break
            try:
                parse_spec(document, origin="")
            except SpecError as error:
                inner = "; ".join(p.removeprefix(": ") for p in error.problems)
                problems.append(f"tune.space.{path}: {distribution} reaches {value!r}, which gives an invalid job: "
                                f"{inner}")
                break
    return problems


def load_spec(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> BaseModel:
    """Read, override and validate a YAML job spec.

    Raises:
        SpecError: the file is missing, not YAML, or not a valid spec.
    """
    path = Path(path)
    origin = str(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise SpecError([f"{origin}: no such file"]) from None
    except (IsADirectoryError, PermissionError, UnicodeDecodeError) as err:
        raise SpecError([f"{origin}: cannot read: {err.__class__.__name__}"]) from None
    try:
        document = load_yaml(text)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f"line {mark.line + 1}: " if mark is not None else ""
        problem = getattr(err, "problem", None) or "malformed document"
        raise SpecError([f"{origin}: {where}invalid YAML: {problem}"]) from None
    if document is None:
        document = {}
    if isinstance(document, dict):
        problems = apply_overrides(document, list(overrides))
        if problems:
            raise SpecError([f"{origin}: {p}" for p in problems])
    return parse_spec(document, origin=origin)


def dump_spec(spec: BaseModel) -> str:
    """The resolved spec (defaults filled in) as YAML, for the run folder."""
    return yaml.safe_dump(spec.model_dump(mode="json"), sort_keys=False)


# ----------------------------------------------------------------------------- errors


def _models_in(annotation) -> list[type[BaseModel]]:
    """The pydantic models an annotation can hold (through Optional/Union/Annotated/list)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    found = []
    if get_origin(annotation) is not None:
        for arg in get_args(annotation):
            found += _models_in(arg)
    return found


def _walk(model_cls: type[BaseModel], loc: tuple) -> tuple[list[str], list[type[BaseModel]]]:
    """Follow an error location through the spec classes.

    Returns the display path (discriminator tags dropped) and the models that the
    last segment's parent can be (to suggest field names for unknown keys).
    """
    shown: list[str] = []
    current = [model_cls]
    for i, part in enumerate(loc):
        if isinstance(part, int):
            shown.append(f"[{part}]")
            continue
        tagged = [m for m in current if _tag_of(m) == part]
        if tagged and i > 0:
            current = tagged  # a discriminated-union tag, not a field
            continue
        shown.append(str(part))
        if i == len(loc) - 1:
            break
        nxt = []
        for m in current:
            field = m.model_fields.get(part)
            if field is not None:
                nxt += _models_in(field.annotation)
        current = nxt
    return shown, current


def _tag_of(model_cls: type[BaseModel]) -> str | None:
    field = model_cls.model_fields.get("source")
    if field is not None and get_origin(field.annotation) is Literal:
        return get_args(field.annotation)[0]
    return None


def _describe(err: ValidationError, model_cls: type[BaseModel]) -> list[str]:
    lines = []
    for item in err.errors():
        loc = tuple(item["loc"])
        shown, parents = _walk(model_cls, loc)
        path = ".".join(shown).replace(".[", "[") or "(top level)"
        kind = item["type"]
        if kind == "extra_forbidden":
            parent = loc[:-1]
            _, owners = _walk(model_cls, parent + ("_",)) if parent else ([], [model_cls])
            allowed = sorted({f for m in owners for f in m.model_fields})
            message = "unknown key" + _suggest(loc[-1], allowed)
        elif kind == "missing":
            message = "required field missing"
        elif kind == "union_tag_invalid":
            ctx = item.get("ctx", {})
            key = ctx.get("discriminator", "'source'").strip("'")
            path += f".{key}"
            message = f"unknown {key} {ctx.get('tag')}; allowed: {ctx.get('expected_tags')}"
        elif kind == "union_tag_not_found":
            key = item.get("ctx", {}).get("discriminator", "'source'").strip("'")
            message = (f"missing '{key}'" + (" (allowed: 'factworld', 'file', 'hf')" if key == "source" else
                                              f" (allowed: {', '.join(BENCH_TYPES)})" if key == "type" else ""))
        else:
            message = item["msg"]
            if message.startswith("Value error, "):
                message = message[len("Value error, "):]
            given = item.get("input")
            if kind not in ("value_error", "model_type", "dict_type") and not isinstance(given, (dict, list)):
                message += f" (got {given!r})"
        message = re.sub(r"\s+", " ", message)
        # Cross-field checks (model validators of a whole job) raise "field.path: message".
        named = re.match(r"^([a-z_]+(?:\.[a-z_]+)*): (.*)$", message)
        if named and kind == "value_error" and path == "(top level)":
            path, message = named.group(1), named.group(2)
        lines.append(f"{path}: {message}")
    return lines
