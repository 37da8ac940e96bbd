"""Command-line surface: help for every command, version, and a start-up that imports no heavy library."""

from __future__ import annotations

import subprocess
import sys

import pytest
from helpers import invoke


@pytest.mark.parametrize("command", [[], ["generate"], ["info"], ["replay"], ["schedulers"]])
def test_help(command: list[str]) -> None:
    result = invoke(*command, "--help")
    assert result.exit_code == 0
    assert "Usage" in result.stdout


def test_generate_help_comes_from_schema() -> None:
    from sdkit.schema.generate import GenerateRecipe

    text = " ".join(invoke("generate", "--help").stdout.replace("│", " ").replace(",", " ").split())
    for flag in [
        "--model",
        "-m",
        "--negative",
        "--scheduler",
        "--steps",
        "--cfg",
        "--width",
        "--height",
        "--seed",
        "--num-images",
        "--init-image",
        "--strength",
        "--mask",
        "--out",
        "-o",
        "--device",
        "--dtype",
        "--offload",
        "--recipe",
    ]:
        assert f" {flag} " in text, flag
    assert "(default: 20)" in text
    assert GenerateRecipe.model_fields["cfg"].description.split(";")[0] in text


def test_cli_startup_imports_no_heavy_library() -> None:
    code = "import sys; from sdkit.cli import app; print(sorted(m for m in ('torch', 'diffusers', 'transformers', 'peft') if m in sys.modules))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"


def test_top_level_help_builds_no_command_module() -> None:
    """`sdkit --help` lists the commands from sdkit.cli.COMMANDS: no command module, schema or pydantic is imported."""
    code = (
        "import sys; from sdkit.cli import main; sys.argv = ['sdkit', '--help']\n"
        "try:\n    main()\nexcept SystemExit:\n    pass\n"
        "print(sorted(m for m in sys.modules if m.startswith(('pydantic', 'sdkit.schema', 'sdkit.cli.')) or m == 'torch'))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "Commands:" in done.stdout and "dreambooth" not in done.stdout
    assert done.stdout.strip().splitlines()[-1] == "['sdkit.cli.finish']"  # how the process ends: standard library only


def test_every_command_is_listed_and_loads() -> None:
    """Each COMMANDS entry builds the command it names, with that help; every command a module defines is listed."""
    import typer.main

    from sdkit.cli import COMMANDS, app, commands, task_commands
    from sdkit.tasks.registry import TASKS

    root = typer.main.get_command(app)
    for name, (_, _, text) in COMMANDS.items():
        command = root.get_command(None, name)
        assert command is not None and command.name == name, name
        assert command.help == text, name
    assert sorted(root.get_command(None, "data").commands) == ["shapes"]  # a group, though it has one command
    defined = {c.name for module in (commands, task_commands) for c in module.app.registered_commands}
    defined |= set(task_commands.groups)
    assert defined == set(COMMANDS)
    for task in TASKS:  # every task of the registry is a command, with the task's help
        *group, name = task.command
        command = root.get_command(None, group[0]).commands[name] if group else root.get_command(None, name)
        assert command.help == task.help, task.name
    listed = invoke("--help").stdout
    assert all(f"  {name} " in listed for name in COMMANDS)


def test_version() -> None:
    result = invoke("--version")
    assert result.exit_code == 0 and result.stdout.startswith("sdkit ")
