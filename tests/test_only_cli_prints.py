"""Only the CLI prints: the library reports lines and progress through `palimpsest.progress` (issue 25, item 2).

The sources of platform/ and envs/ are parsed (not grepped: a print in a comment or a string
is no print, and `print (x)` or an alias of sys.stdout is still one) and every call that
writes to the terminal is an error outside the CLI (`palimpsest/cli.py`, the `palimpsest/cli/`
package) and the one sink, `palimpsest/progress.py`.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
ROOTS = (REPO / "platform", REPO / "envs")
ALLOWED = ("palimpsest/cli.py", "palimpsest/cli/", "palimpsest/progress.py")
STREAMS = ("stdout", "stderr", "__stdout__", "__stderr__")
PRINTING_FUNCTIONS = {"print_exc", "print_exception", "print_stack", "print_tb", "pprint"}  # traceback, pprint


def printing_calls(source: str) -> list[tuple[int, str]]:
    """(line, what) for each call in `source` that writes to the terminal."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if not isinstance(node, ast.Call):
            continue
        func = node.func
        if isinstance(func, ast.Name) and func.id in ("print", "pprint"):
            found.append((node.lineno, f"{func.id}(...)"))
        elif isinstance(func, ast.Attribute):
            if func.attr == "print":  # a rich Console's, or rich.print
                found.append((node.lineno, f"{ast.unparse(func)}(...)"))
            elif func.attr in PRINTING_FUNCTIONS and isinstance(func.value, ast.Name) \
                    and func.value.id in ("traceback", "pprint"):
                found.append((node.lineno, f"{ast.unparse(func)}(...)"))
            elif func.attr in ("write", "writelines", "flush") and _is_std_stream(func.value):
                found.append((node.lineno, f"{ast.unparse(func)}(...)"))
    return sorted(found)


def _is_std_stream(node: ast.AST) -> bool:
    """sys.stdout and the like (`sys.stdout`, `sys.__stderr__`)."""
    return isinstance(node, ast.Attribute) and node.attr in STREAMS and isinstance(node.value, ast.Name) \
        and node.value.id == "sys"


def sources() -> list[Path]:
    return sorted(path for root in ROOTS for path in root.rglob("*.py") if ".egg-info" not in str(path))


def allowed(path: Path) -> bool:
    relative = path.relative_to(REPO).as_posix()
    return any(relative.startswith(f"platform/{prefix}") for prefix in ALLOWED)


def test_no_library_module_prints():
    offences = [f"{path.relative_to(REPO)}:{line}: {what}"
                for path in sources() if not allowed(path)
                for line, what in printing_calls(path.read_text(encoding="utf-8"))]
    assert not offences, ("library code must not print: report through palimpsest.progress "
                          "(say, warn, begin/update/end)\n" + "\n".join(offences))


def test_the_walk_sees_the_library():
    names = {path.relative_to(REPO).as_posix() for path in sources()}
    assert "platform/palimpsest/tune.py" in names and "platform/palimpsest/train/loop.py" in names
    assert any(name.startswith("envs/") for name in names)
    assert allowed(REPO / "platform/palimpsest/progress.py") and allowed(REPO / "platform/palimpsest/cli/run.py")
    assert not allowed(REPO / "platform/palimpsest/tune.py")


@pytest.mark.parametrize("line", [
    'print("[palimpsest] hello", flush=True)',
    "print (x)",
    "sys.stdout.write(text)",
    "sys.stderr.write(text + '\\n')",
    "sys.__stdout__.write(text)",
    "console.print(text)",
    "traceback.print_exc()",
    "pprint.pprint(value)",
])
def test_each_way_of_printing_is_found(line):
    assert printing_calls(f"import sys\n\ndef f(x, text, value, console):\n    {line}\n") == \
        [(4, printing_calls(line)[0][1])]


def test_text_that_mentions_print_is_no_print():
    assert printing_calls('"""print(x) in a docstring"""\n# print(x)\nlogger.info("print(x)")\nfingerprint(x)\n') == []


def test_a_print_put_back_into_the_library_fails_the_walk(tmp_path):
    """What the walk says of tune.py with one of its old prints put back."""
    source = (REPO / "platform/palimpsest/tune.py").read_text(encoding="utf-8")
    assert printing_calls(source) == []
    target = "def _to_bucket("
    assert target in source
    put_back = source.replace(target, 'def _old():\n    print("[palimpsest] note: x", flush=True)\n\n\n' + target, 1)
    line = put_back.splitlines().index('    print("[palimpsest] note: x", flush=True)') + 1
    assert printing_calls(put_back) == [(line, "print(...)")]
