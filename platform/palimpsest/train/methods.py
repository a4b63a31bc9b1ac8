"""What a training method declares about itself, as data, and how methods are found by name.

A method (continual or unlearning) is one file in its family's package. The
file opens with its declaration:

    METHOD = MethodInfo(
        name="ewc", family="continual", implementation="EWC",
        summary="...", paper="Kirkpatrick et al., 2017",
        params=(Param("lam", "float", 1e5, "penalty weight λ", low=0),),
        backends=ALL_BACKENDS,
    )

and then defines the class named by `implementation` (a `TrainingMethod`). `discover`
reads every declaration of a package statically, with `ast`, the way setuptools reads an
`attr:` version without importing the module: `palimpsest validate` learns every
method's parameters, ranges and backends without importing torch, and the runner imports
only the method it runs. A test checks that the statically read declaration is the one
the imported module holds.

This module imports neither torch nor ray.
"""

from __future__ import annotations

import ast
import difflib
import importlib
import importlib.util
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# Backends as the loop names them: DDP, and DeepSpeed by ZeRO stage.
ALL_BACKENDS = ("ddp", "zero0", "zero1", "zero2", "zero3")
# Every backend but ZeRO-3, which partitions the weights: for methods that read or copy whole weights.
BELOW_ZERO3 = ("ddp", "zero0", "zero1", "zero2")
# An unlearning method's backends: every request is scored on the whole model, which ZeRO-3 shards.
WHOLE_WEIGHTS_BACKENDS = {"backends": BELOW_ZERO3,
                          "backend_reason": "each request is evaluated on the whole weights, which ZeRO-3 partitions"}
PARAM_KINDS = ("int", "float", "bool", "str", "int_list", "str_list")


def backend_name(backend: str, zero_stage: int) -> str:
    """The backend as methods declare it: 'ddp' or 'zero<stage>'."""
    return "ddp" if backend == "ddp" else f"zero{zero_stage}"


@dataclass(frozen=True)
class Param:
    """One method parameter: its type, default, allowed range and meaning."""

    name: str
    kind: str
    default: Any
    doc: str
    low: float | None = None
    high: float | None = None
    low_open: bool = False  # True: the bound itself is not allowed (x > low)
    high_open: bool = False
    choices: tuple | None = None
    nullable: bool = False  # None is a legal value (e.g. "default: the training batch size")

    def describe(self) -> str:
        """The allowed values in words, for error messages and the README."""
        if self.choices:
            allowed = "one of " + ", ".join(map(str, self.choices))
        else:
            parts = []
            if self.low is not None:
                parts.append(f"{'>' if self.low_open else '≥'} {self.low:g}")
            if self.high is not None:
                parts.append(f"{'<' if self.high_open else '≤'} {self.high:g}")
            allowed = f"{self.kind} {' and '.join(parts)}".strip()
        return allowed + (" or null" if self.nullable else "")

    def check(self, value: Any) -> str | None:
        """None if `value` is allowed, else what is wrong (without the parameter's name)."""
        if value is None:
            return None if self.nullable else f"must be {self.describe()}, got null"
        kind_ok = {
            "int": isinstance(value, int) and not isinstance(value, bool),
            "float": isinstance(value, (int, float)) and not isinstance(value, bool),
            "bool": isinstance(value, bool),
            "str": isinstance(value, str),
            "int_list": isinstance(value, (list, tuple)) and all(isinstance(v, int) and not isinstance(v, bool)
                                                                 for v in value),
            "str_list": isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value),
        }[self.kind]
        if not kind_ok:
            return f"must be {self.describe()}, got {value!r}"
        if self.choices and value not in self.choices:
            return f"must be one of {', '.join(map(str, self.choices))}, got {value!r}" + _close(value, self.choices)
        if self.kind in ("int", "float"):
            if self.low is not None and (value <= self.low if self.low_open else value < self.low):
                return f"must be {self.describe()}, got {value!r}"
            if self.high is not None and (value >= self.high if self.high_open else value > self.high):
                return f"must be {self.describe()}, got {value!r}"
        if self.kind.endswith("_list") and not value and not self.nullable:
            return "must not be empty"
        return None


@dataclass(frozen=True)
class MethodInfo:
    """A method's facts: name, family, parameters, the backends it runs on, where its code is."""

    name: str
    family: str
    implementation: str  # class name in the declaring module
    summary: str
    paper: str
    params: tuple[Param, ...] = ()
    backends: tuple[str, ...] = ALL_BACKENDS
    backend_reason: str = ""  # why the other backends are refused
    needs_general: bool = False  # needs general (non-task) samples in the run
    # Safe under DP-SGD (`privacy:`): every read of the private data goes through the
    # clipped, noised per-example gradients and the Poisson sampler. Otherwise, why not.
    private: bool = False
    private_reason: str = "it does not state a private form"
    # Unlearning: the method has a forget objective whose gradient GU can project (`gu: true`),
    # unless `gu_refusal` says why GU would train another objective than the method's.
    projectable: bool = False
    gu_refusal: str = ""
    # training.packing: why the method cannot train on packed rows (it reads the model's
    # outputs row by row: logits or hidden states per example); empty: it can.
    packing_reason: str = ""
    module: str = field(default="", compare=False)  # filled in by `discover`

    def defaults(self) -> dict[str, Any]:
        return {p.name: p.default for p in self.params}

    def check_params(self, given: dict) -> list[tuple[str, str]]:
        """Every problem with `given` as (parameter name, message); empty when all are valid."""
        known = {p.name: p for p in self.params}
        problems = []
        for name, value in given.items():
            if name not in known:
                hint = _close(name, list(known))
                allowed = ", ".join(known) or "none"
                problems.append((str(name), f"unknown parameter for {self.name}{hint}; allowed: {allowed}"))
                continue
            message = known[name].check(value)
            if message:
                problems.append((name, message))
        return problems

    def resolve(self, given: dict) -> dict[str, Any]:
        """Defaults overlaid with `given` (already checked)."""
        return {**self.defaults(), **given}

    def supports(self, backend: str, zero_stage: int) -> bool:
        return backend_name(backend, zero_stage) in self.backends


# ----------------------------------------------------------------------------- parameters several methods share


def retain_weight(default: float = 1.0, doc: str = "α, the weight of the retain NLL") -> Param:
    """An unlearning method's α: the weight of the retain set's answer NLL that `UnlearningMethod.retain_loss`
    adds (0: no retain term). `doc` says it in the method's words (its source's default, say)."""
    return Param("retain_weight", "float", default, doc, low=0)


def forget_weight(default: float, doc: str) -> Param:
    """An unlearning method's weight of its forget term (γ in most papers); > 0, or the method forgets nothing."""
    return Param("forget_weight", "float", default, doc, low=0, low_open=True)


def inverse_temperature(default: float) -> Param:
    """β of a log-sigmoid preference loss (DPO and its unlearning forms NPO, SimNPO); > 0 (the loss divides by it)."""
    return Param("beta", "float", default, "β, the inverse temperature", low=0, low_open=True)


# A LoRA adapter's rank (continual `lora`, unlearning `gs_lora`).
LORA_RANK = Param("r", "int", 8, "adapter rank", low=1)


def _close(word, allowed) -> str:
    match = difflib.get_close_matches(str(word), [str(a) for a in allowed], n=1, cutoff=0.6)
    return f"; did you mean '{match[0]}'?" if match else ""


# ----------------------------------------------------------------------------- discovery

_DECLARATION = "METHOD"
# What a declaration may name: the declaration types and the shared backends and parameters above.
_DECLARATION_NAMES = {"MethodInfo": MethodInfo, "Param": Param, "ALL_BACKENDS": ALL_BACKENDS,
                      "BELOW_ZERO3": BELOW_ZERO3, "WHOLE_WEIGHTS_BACKENDS": WHOLE_WEIGHTS_BACKENDS,
                      "retain_weight": retain_weight, "forget_weight": forget_weight,
                      "inverse_temperature": inverse_temperature, "LORA_RANK": LORA_RANK}
_CACHE: dict[str, dict[str, MethodInfo]] = {}


def discover(package: str) -> dict[str, MethodInfo]:
    """Every method declared in `package` (a dotted name), by name, without importing the package.

    Raises:
        ValueError: two files declare the same name, or a declaration is not plain data.
    """
    if package in _CACHE:
        return _CACHE[package]
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ValueError(f"no method package {package}")
    found: dict[str, MethodInfo] = {}
    for directory in spec.submodule_search_locations:
        for path in sorted(Path(directory).glob("*.py")):
            info = _read_declaration(path)
            if info is None:
                continue
            if info.name in found:
                raise ValueError(f"method '{info.name}' is declared twice ({found[info.name].module} and {path.stem})")
            found[info.name] = _with_module(info, f"{package}.{path.stem}")
    _CACHE[package] = found
    return found


def _with_module(info: MethodInfo, module: str) -> MethodInfo:
    from dataclasses import replace

    return replace(info, module=module)


def _read_declaration(path: Path) -> MethodInfo | None:
    """The `METHOD = MethodInfo(...)` of a file, evaluated with nothing but the declaration types and the shared
    backends and parameters (`_DECLARATION_NAMES`)."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    for node in tree.body:
        if isinstance(node, ast.Assign) and [getattr(t, "id", None) for t in node.targets] == [_DECLARATION]:
            code = compile(ast.Expression(node.value), str(path), "eval")
            namespace = {**_DECLARATION_NAMES, "__builtins__": {}}
            try:
                info = eval(code, namespace)  # noqa: S307 — names limited to the declaration names
            except Exception as error:
                raise ValueError(f"{path}: METHOD must be a MethodInfo(...) of plain values: {error}") from None
            if not isinstance(info, MethodInfo):
                raise ValueError(f"{path}: METHOD must be a MethodInfo(...)")
            return info
    return None


def load_method_class(info: MethodInfo):
    """Import the module that declares `info` and return its implementation class."""
    module = importlib.import_module(info.module)
    declared = getattr(module, _DECLARATION)
    if declared.name != info.name:
        raise ValueError(f"{info.module}: declares '{declared.name}', expected '{info.name}'")
    return getattr(module, info.implementation)


def make_method(info: MethodInfo, params: dict | None = None):
    """An instance of the method with its parameters checked and defaults filled in.

    Raises:
        ValueError: a parameter is unknown or out of range (every problem, one per line).
    """
    params = dict(params or {})
    problems = info.check_params(params)
    if problems:
        raise ValueError("\n".join(f"{info.name}.{name}: {message}" for name, message in problems))
    return load_method_class(info)(**info.resolve(params))
