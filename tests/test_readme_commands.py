"""README.md's commands, run exactly as written.

Every command line of the README's ```bash blocks (backslash continuations joined, trailing `# comments` dropped)
is classified by the explicit rules below, and every one that works offline runs through `bash -c`, word for word,
under a pseudo-terminal (tests/helpers.py `in_terminal`), with the installed `sdkit` console script first on
PATH, in README order, in one temporary working directory. That directory holds the files the README takes for
granted: `my-diffusers-folder` (the tiny SD test pipeline), `in.png`, `mask.png`, `job.yaml`, `file.yaml` (the
README's own YAML example), LoRAs for the embedded model (`my_lora.safetensors`, `style.safetensors`), an embedding
(`learned_embeds.safetensors`), and a link to the repository's `recipes/`. Outputs (`out/`, `outputs/`, `again/`,
`data/`, ...) land there; nothing is written into the repository.

Rules (a command that none of them excludes must exit 0 with no traceback):
- `make demo` and `make test` are not run here: they install a virtual environment and run this very suite. The
  demo's own `sdkit generate` command is in the README's Generate block, checked against the Makefile, and runs.
- Network: a `sdkit` command whose model (`-m/--model`, `--clip-model`) is a hub model (an alias of
  `sdkit.models.ALIASES` that names a hub id, or an `org/name` id), or `sdkit preprocess TYPE` where TYPE's detector
  loads weights from the hub (`sdkit.control.preprocessors.DETECTORS[TYPE].repo`).
- `EXCLUDED`: commands that take minutes as written, or need a download other than the hub's (FID's Inception
  weights), each with its reason. The list must match README lines exactly, so it cannot go stale silently.
`MUST_RUN` names commands that must be found in the README and run, so deleting them from the README fails here.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import time
from pathlib import Path

import numpy as np
import pytest
from helpers import in_terminal
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"

SERVES = "a server runs until it is stopped; tests/test_server_*.py start `sdkit serve` on a free port and drive it"
EXCLUDED = {
    "sdkit serve": SERVES,
    "sdkit serve --models-dir models --port 7860 -o outputs --max-loaded-models 2": SERVES,
    "sdkit serve --host 0.0.0.0 --api-auth me:secret --cors-allow-origins http://localhost:3000": SERVES,
    "accelerate launch --num_processes 2 -m sdkit run file.yaml":
        "two processes run file.yaml's six generate jobs and its eval job, 400 images at the default n=200: "
        "2.5 min here; tests/test_run_distributed.py runs `accelerate launch` on small recipes",
    "sdkit train text-to-image -m shapes --train-text-encoder --add-words heart --add-words cross --data wide/ -o out/wide":
        "1,000 optimiser steps (the default max_steps) with the text encoder, minutes on a CPU; "
        "tests/test_train_text_to_image.py trains with --add-words in a few steps",
    "accelerate launch --multi_gpu --num_processes 8 -m sdkit train lora --recipe lora.yaml":
        "needs 8 GPUs; tests/test_train_lora.py and tests/test_multimachine.py launch 2 CPU processes",
    "accelerate launch --multi_gpu --num_machines 2 --num_processes 16 --machine_rank R --main_process_ip 10.0.0.1 "
    "--main_process_port 29500 -m sdkit train lora --recipe lora.yaml":
        "needs two machines with 8 GPUs each; tests/test_multimachine.py runs two launches against 127.0.0.1",
    "sdkit eval fid outputs/samplers/01-euler-steps-20 --reference data/images":
        "downloads the FID Inception weights (91 MB) from GitHub; tests/test_eval_metrics.py runs `eval fid` with a "
        "random-weight file of the same layout and checks the offline error",
    "sdkit eval fid outputs/run --reference data/images --inception-weights weights-inception-2015-12-05-6726825d.pth --allow-pickle":
        "needs the FID Inception weights file; tests/test_eval_metrics.py runs `eval fid --inception-weights`",
}  # fmt: skip

MUST_RUN = (
    "sdkit generate ",
    "sdkit schedulers",
    "sdkit info out/00001-7.png",
    "sdkit replay out/00001-7.png -o again",
    "sdkit run recipes/generate/shapes-sweep.yaml",
    "sdkit run file.yaml --dry-run",
    "sdkit schema generate > generate.schema.json",
    "sdkit data shapes ",
    "sdkit eval shapes ",
    "sdkit eval sweep ",
    "sdkit schedulers --plot ",
)


def strip_comment(line: str) -> str:
    """`line` without a trailing `# comment` (a `#` outside quotes that starts a word), right-stripped."""
    quote = None
    for i, ch in enumerate(line):
        if quote:
            quote = None if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch == "#" and (i == 0 or line[i - 1].isspace()):
            return line[:i].rstrip()
    return line.rstrip()


def readme_commands(text: str) -> list[str]:
    """The command lines of the ```bash blocks, in order, continuations joined and comments dropped."""
    commands = []
    for block in re.findall(r"^```bash\n(.*?)^```", text, re.M | re.S):
        pending = ""
        for line in block.splitlines():
            if line.rstrip().endswith("\\"):
                pending += line.strip()[:-1].rstrip() + " "
                continue
            command = strip_comment(pending + line.strip())
            pending = ""
            if command:
                commands.append(command)
    return commands


def needs_network(command: str) -> str | None:
    """Why `command` cannot run offline (see the module docstring), or None."""
    from sdkit.control.preprocessors import DETECTORS
    from sdkit.models import ALIASES

    argv = shlex.split(command)
    if argv[0] != "sdkit":
        return None
    for flag, value in zip(argv, argv[1:], strict=False):
        target = ALIASES.get(value, value) if flag in ("-m", "--model", "--clip-model") else ""
        if re.fullmatch(r"[A-Za-z0-9][\w.-]*/[\w.-]+", target):
            return f"model {value} comes from the Hugging Face Hub"
    if argv[1] == "preprocess" and DETECTORS[argv[2]].repo:
        return f"{argv[2]} weights come from {DETECTORS[argv[2]].repo}"
    return None


def plan() -> list[tuple[str, str | None]]:
    """(command, why it is not run or None) for every README command."""
    out = []
    for command in readme_commands(README.read_text()):
        if command.startswith("make "):
            out.append((command, "make targets are not run here (see the module docstring)"))
        else:
            out.append((command, EXCLUDED.get(command) or needs_network(command)))
    return out


def makefile_demo() -> str:
    """The `sdkit generate` command `make demo` runs, as a user types it."""
    makefile = (ROOT / "Makefile").read_text()
    [line] = re.findall(r"^demo:.*\n\t(.*)$", makefile, re.M)
    return line.replace("$(SDKIT)", "sdkit")


def test_the_plan_is_explicit_and_complete() -> None:
    commands = [command for command, _ in plan()]
    run = [command for command, why in plan() if why is None]
    assert makefile_demo() in run, f"README's Generate block lacks `make demo`'s command {makefile_demo()!r}"
    for prefix in MUST_RUN:
        assert any(c.startswith(prefix) for c in run), f"no README command starting {prefix!r} runs offline"
    for command in EXCLUDED:
        assert command in commands, f"EXCLUDED names a command the README no longer has: {command!r}"
    assert {"make demo", "make test"} <= set(commands)
    assert len(run) >= 15, run


@pytest.fixture(scope="module")
def workdir(tmp_path_factory, tiny_sd_dir: Path) -> Path:
    """A working directory holding what the README's commands take for granted (see the module docstring)."""
    import torch
    from safetensors.torch import save_file

    from sdkit.data.shapes import write_dataset
    from sdkit.models import ALIASES
    from sdkit.schema.finetune import TrainLoraRecipe
    from sdkit.tasks.train_lora import run

    work = tmp_path_factory.mktemp("readme")
    (work / "recipes").symlink_to(ROOT / "recipes")
    (work / "my-diffusers-folder").symlink_to(tiny_sd_dir)
    picture = Image.new("RGB", (64, 64), "blue")
    picture.paste((255, 0, 0), (16, 16, 48, 48))
    picture.save(work / "in.png")
    mask = Image.new("L", (64, 64), 0)
    mask.paste(255, (8, 8, 40, 40))
    mask.save(work / "mask.png")
    (work / "job.yaml").write_text("prompt: a red circle on a blue background\nsteps: 20\n")
    [example] = re.findall(r"^```yaml\n(.*?)^```", README.read_text(), re.M | re.S)
    (work / "file.yaml").write_text(example)  # the README's recipe example, as printed

    scratch = tmp_path_factory.mktemp("readme-inputs")
    data = write_dataset(scratch / "data", 4, seed=0, size=32)
    lora = run(TrainLoraRecipe(model="shapes", data_dir=data, output_dir=scratch / "lora", max_steps=1, threads=1))
    for name in ("my_lora.safetensors", "style.safetensors"):
        (work / name).write_bytes(lora.files[0].read_bytes())
    width = json.loads((Path(ALIASES["shapes"]) / "text_encoder/config.json").read_text())["hidden_size"]
    save_file({"<cat-toy>": torch.randn(1, width, generator=torch.Generator().manual_seed(0)) * 0.01},
              str(work / "learned_embeds.safetensors"))  # fmt: skip
    return work


def repository_files() -> dict[str, tuple[int, int]]:
    """Every file of the checkout with its size and mtime, less git's, caches, a virtual environment and the top
    `runs/` folder (git-ignored: benches and the user's own trainings write there while the suite runs)."""
    skip = {".git", ".venv", ".pytest_cache", ".ruff_cache", "__pycache__"}
    files = {}
    for folder, dirs, names in os.walk(ROOT):
        dirs[:] = [d for d in dirs if d not in skip and not (folder == str(ROOT) and d == "runs")]
        for name in names:
            st = os.stat(os.path.join(folder, name), follow_symlinks=False)
            files[os.path.join(folder, name)] = (st.st_size, st.st_mtime_ns)
    return files


@pytest.mark.slow
def test_readme_commands_run_as_written(workdir: Path) -> None:
    """Each offline README command exits 0 without a traceback (`make demo`/`make test` are not run: see above)."""
    before = repository_files()
    failures = []
    for command, why in plan():
        if why is not None:
            print(f"not run: {command}\n    {why}")
            continue
        started = time.monotonic()
        screen = in_terminal(command, workdir, timeout=300)
        print(f"{time.monotonic() - started:6.1f} s  exit {screen.code}  {command}")  # shown with -rP or -s
        if screen.code != 0 or "Traceback" in screen.text or "internal error" in screen.text:
            failures.append(f"$ {command}\n{screen}")
    assert not failures, "\n\n".join(failures)

    pixels = [np.asarray(Image.open(workdir / d / "00001-7.png")) for d in ("out", "again")]
    assert np.array_equal(*pixels), "`sdkit replay` did not reproduce out/00001-7.png"
    assert len(list((workdir / "outputs/demo").glob("0000?-*.png"))) == 4
    assert (workdir / "outputs/sweep/grid-cfg-seed.png").is_file() and (workdir / "out/eval/report.json").is_file()
    assert (workdir / "generate.schema.json").read_text().startswith("{")
    assert len(list((workdir / "data/images").glob("*.png"))) == 2000
    assert repository_files() == before, "a README command wrote into the repository"


@pytest.mark.slow
def test_readme_hub_commands_are_well_formed(tmp_path: Path) -> None:
    """The commands that need the hub still run here, offline, in an empty folder: each must stop with sdkit's
    one-line `error:` (exit 2: the model is not cached, or an input file is missing), never a usage error (an option
    the CLI does not have) or a traceback. This keeps their flags honest, though their work cannot run."""
    failures = []
    for command, why in plan():
        if why is None or command.startswith("make ") or command in EXCLUDED:
            continue
        screen = in_terminal(command, tmp_path, timeout=120)
        last = [line for line in screen.lines if line.strip()][-1:]
        if screen.code != 2 or not last or not last[0].startswith("error: ") or "Traceback" in screen.text:
            failures.append(f"$ {command}\n{screen}")
    assert not failures, "\n\n".join(failures)
