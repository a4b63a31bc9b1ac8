"""The command line as README states it: every option of every command in its synopsis, `validate --set`."""

from __future__ import annotations

import re
from pathlib import Path

import typer
from typer.testing import CliRunner

from palimpsest.cli import app

README = Path(__file__).resolve().parents[1] / "README.md"


def _synopsis() -> list[str]:
    text = README.read_text()
    block = text[text.index("## The command line"):]
    block = block[block.index("```\n") + 4:]
    return block[: block.index("```")].splitlines()


def test_readme_synopsis_lists_every_command_and_option():
    lines = _synopsis()
    group = typer.main.get_command(app)
    missing = []
    for name, command in group.commands.items():
        # a command's lines: those naming it, and the continuation lines that follow them
        mine, keep = [], False
        for line in lines:
            if line.startswith("palimpsest "):
                keep = re.search(rf"(^palimpsest |\| ){re.escape(name)}\b", line) is not None
            if keep:
                mine.append(line)
        if not mine:
            missing.append(f"{name}: no line")
            continue
        text = " ".join(mine)
        for param in command.params:
            for option in param.opts:
                if option.startswith("--") and option != "--help" and option not in text:
                    missing.append(f"{name} {option}")
    assert not missing, f"README's synopsis lacks: {', '.join(missing)}"


def test_validate_applies_set_to_every_job(tmp_path):
    runner = CliRunner()
    quickstart = str(Path(__file__).resolve().parents[1] / "jobs" / "quickstart.yaml")
    bad = runner.invoke(app, ["validate", quickstart, "--set", "training.lr=-1"])
    assert bad.exit_code == 2 and "training.lr" in bad.output, bad.output
    good = runner.invoke(app, ["validate", quickstart, "--set", "training.lr=0.01"])
    assert good.exit_code == 0 and "ok:" in good.output, good.output
