"""Command-line surface: help for every command, version, and a start-up that imports no heavy library."""

from __future__ import annotations

import subprocess
import sys

import pytest
from cli_helpers import invoke


@pytest.mark.parametrize("command", [[], ["generate"], ["info"], ["replay"], ["schedulers"]])
def test_help(command: list[str]) -> None:
    result = invoke(*command, "--help")
    assert result.exit_code == 0
    assert "Usage" in result.stdout


def test_generate_help_comes_from_schema() -> None:
    from sdkit.schema.generate import GenerateRecipe

    text = " ".join(invoke("generate", "--help").stdout.replace("│", " ").replace(",", " ").split())
    for flag in ["--model", "-m", "--negative", "--scheduler", "--steps", "--cfg", "--width", "--height", "--seed",
                 "--num-images", "--init-image", "--strength", "--mask", "--out", "-o", "--device", "--dtype",
                 "--offload", "--recipe"]:
        assert f" {flag} " in text, flag
    assert "(default: 20)" in text
    assert GenerateRecipe.model_fields["cfg"].description.split(";")[0] in text


def test_cli_startup_imports_no_heavy_library() -> None:
    code = "import sys; from sdkit.cli import app; print(sorted(m for m in ('torch', 'diffusers', 'transformers', 'peft') if m in sys.modules))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"


def test_version() -> None:
    result = invoke("--version")
    assert result.exit_code == 0 and result.stdout.startswith("sdkit ")
