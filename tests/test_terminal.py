"""The installed `sdkit` console script as people meet it: at a terminal. Each command runs under a pseudo-terminal
(tests/helpers.py `in_terminal`: a real pty as stdin, stdout and stderr, 120 columns, TERM=xterm-256color) and
must exit 0, write its files, show its progress (a finished `N/N` step count with it/s and an ETA), and show no
traceback. With stderr a pipe or a file (CI, `2>log`), nothing sdkit writes there may hold an escape code."""

from __future__ import annotations

import re
import sys
import textwrap
from pathlib import Path

from helpers import SDKIT, Screen, in_terminal, terminal_env
from PIL import Image

# A finished bar: "N/N", then (after any extra columns such as loss and lr) a measured rate and an ETA.
FINISHED_BAR = re.compile(r"\b(\d+)/\1\b.* \d+\.\d\d it/s .*eta \d\d:\d\d:\d\d")


def assert_clean_run(screen: Screen, *shown: str) -> None:
    """Exit 0, no traceback or internal error on the screen, and each of `shown` on it."""
    assert screen.code == 0, screen
    assert "Traceback" not in screen.text and "internal error" not in screen.text, screen
    for text in shown:
        assert text in screen.text, (text, str(screen))


def assert_progress(screen: Screen) -> None:
    assert any(FINISHED_BAR.search(line) for line in screen.lines), screen


def test_generate(tmp_path: Path) -> None:
    screen = in_terminal([SDKIT, "generate", "a red circle on a blue background", "--steps", "2", "-o", "out"], tmp_path)
    assert_clean_run(screen)
    [png] = (tmp_path / "out").glob("00001-*.png")
    assert f"out/{png.name}" in screen.text, screen
    assert_progress(screen)


def test_eval_shapes(tmp_path: Path) -> None:
    args = ["eval", "shapes", "--n", "2", "--steps", "2", "--no-heldout", "-o", "report"]
    screen = in_terminal([SDKIT, *args], tmp_path)
    assert_clean_run(screen, "shapes eval: shapes")  # the table's title
    assert_progress(screen)
    assert (tmp_path / "report/report.json").is_file() and (tmp_path / "report/samples.png").is_file()


def test_run_recipe(tmp_path: Path) -> None:
    (tmp_path / "job.yaml").write_text("task: generate\nprompt: a green triangle on a white background\nsteps: 2\nout: out\n")
    screen = in_terminal([SDKIT, "run", "job.yaml"], tmp_path)
    assert_clean_run(screen)
    [png] = (tmp_path / "out").glob("00001-*.png")
    assert f"out/{png.name}" in screen.text, screen
    assert_progress(screen)


def test_data_shapes_then_train_lora(tmp_path: Path) -> None:
    data = in_terminal([SDKIT, "data", "shapes", "-o", "data", "--n", "4", "--size", "32"], tmp_path)
    assert_clean_run(data, "data")  # instant: no bar, the folder's path
    assert len(list((tmp_path / "data/images").glob("*.png"))) == 4 and (tmp_path / "data/metadata.jsonl").is_file()

    args = ["train", "lora", "--data", "data", "--max-steps", "2", "--train-batch-size", "2", "--threads", "1", "-o", "lora"]
    screen = in_terminal([SDKIT, *args], tmp_path)
    assert_clean_run(screen, "lora/pytorch_lora_weights.safetensors")
    assert_progress(screen)
    assert re.search(r"\b2/2 +loss \d\.\d{4} +lr \d\.\d\de-\d\d", screen.text), screen  # training's own columns
    assert (tmp_path / "lora/pytorch_lora_weights.safetensors").is_file()


def test_preprocess_canny(tmp_path: Path) -> None:
    picture = Image.new("RGB", (64, 64), "blue")
    picture.paste((255, 0, 0), (20, 20, 44, 44))
    picture.save(tmp_path / "in.png")
    screen = in_terminal([SDKIT, "preprocess", "canny", "in.png", "-o", "map.png"], tmp_path)
    assert_clean_run(screen, "map.png")  # one image: no bar, the written path
    with Image.open(tmp_path / "map.png") as edges:
        assert edges.size == (64, 64) and edges.convert("L").getextrema() == (0, 255)  # the square's edges


def test_progress_shows_rate_and_eta_from_the_first_step(tmp_path: Path) -> None:
    """sdkit.progress.bar at a terminal: after step 1 of 2 (each taking 1 s) the bar already shows it/s and an ETA.
    Rich's own speed stays None until two updates have come in, which crashed every command at a terminal."""
    code = textwrap.dedent("""
        import time
        from sdkit.progress import bar
        with bar("steps", 2) as advance:
            for _ in range(2):
                time.sleep(1)
                advance()
        """)
    screen = in_terminal([sys.executable, "-c", code], tmp_path)
    assert_clean_run(screen)
    frames = [frame for line in screen.text.split("\n") for frame in line.split("\r")]
    assert any(re.search(r"\b1/2 +\d+\.\d\d it/s .*eta 00:00:0\d", frame) for frame in frames), screen
    assert "- it/s" in screen.text and "eta -" in screen.text  # the placeholder before the first step


def test_no_escape_codes_in_piped_stderr(tmp_path: Path) -> None:
    """`sdkit generate ... 2>log` at a terminal: the log holds no escape code; stdout (the terminal) the path."""
    screen = in_terminal([SDKIT, "generate", "x", "--steps", "2", "-o", "out"], tmp_path, pipe_stderr=True)
    assert_clean_run(screen)
    [png] = (tmp_path / "out").glob("00001-*.png")
    assert f"out/{png.name}" in screen.text, screen
    assert "\x1b" not in screen.stderr, repr(screen.stderr)


def test_no_escape_codes_in_a_training_log_even_with_force_color(tmp_path: Path) -> None:
    """Training logs to a pipe get plain `step k/N` lines, even where FORCE_COLOR asks rich for a terminal."""
    from sdkit.data.shapes import write_dataset

    write_dataset(tmp_path / "data", 4, seed=0, size=32)
    args = ["train", "lora", "--data", "data", "--max-steps", "2", "--train-batch-size", "2", "--threads", "1",
            "--log-every", "1", "-o", "lora"]  # fmt: skip
    screen = in_terminal([SDKIT, *args], tmp_path, pipe_stderr=True, env=terminal_env(FORCE_COLOR="1"))
    assert_clean_run(screen)
    assert "\x1b" not in screen.stderr, repr(screen.stderr)
    assert re.search(r"^step 1/2  loss \d\.\d{4}  lr \S+  \d+\.\d\d it/s  eta \d\d:\d\d:\d\d$", screen.stderr, re.M), screen


def test_paths_on_a_redirected_stdout_while_the_bar_shows(tmp_path: Path) -> None:
    """`sdkit generate ... > paths.txt` at a terminal: the bar on the terminal, the path in the file (rich would
    route stdout through its stderr console while a bar is live)."""
    screen = in_terminal(f"'{SDKIT}' generate x --steps 2 -o out > paths.txt", tmp_path)
    assert_clean_run(screen)
    assert_progress(screen)
    [png] = (tmp_path / "out").glob("00001-*.png")
    assert (tmp_path / "paths.txt").read_text() == f"out/{png.name}\n"
