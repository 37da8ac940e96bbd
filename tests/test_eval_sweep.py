"""`sdkit eval sweep` on the shipped shapes model (3 samplers x 3 step counts: grid, plot, JSON, and adherence that
rises with steps), its cfg and LoRA-weight axes with the CLIP metric, its errors; and `sdkit schedulers --plot`."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from helpers import SDKIT, assert_user_error, in_terminal, invoke, pixels, snapshot
from PIL import Image
from test_terminal import assert_clean_run, assert_progress

from sdkit.outputs import read_recipe

SAMPLERS = ("Euler", "DPM++ 2M", "UniPC")


def readable_png(path: Path) -> tuple[int, int]:
    """The size of a PNG that decodes fully and is not blank (a figure has lines, text and colours)."""
    with Image.open(path) as img:
        assert img.format == "PNG"
        rgb = np.asarray(img.convert("RGB"))
    assert len(np.unique(rgb.reshape(-1, 3), axis=0)) > 20, path
    return img.size


@pytest.mark.slow  # 12 prompts x 9 cells on the shapes model
def test_sweep_three_samplers_by_three_step_counts(tmp_path: Path) -> None:
    from sdkit.pipelines import PipelineCache
    from sdkit.tasks.registry import get_task

    task = get_task("eval-sweep")
    fields = {"world_prompts": 12, "samplers": list(SAMPLERS), "values": [2, 5, 20], "cfg": 5, "seed": 3, "out": tmp_path / "out"}
    cache = PipelineCache()
    report = task.run(task.recipe(fields, "test"), cache=cache)

    assert cache.loads == 1  # one model load for the nine cells
    out = tmp_path / "out"
    data = json.loads((out / "sweep.json").read_text())
    assert data == report.data and data["samplers"] == list(SAMPLERS) and data["values"] == [2, 5, 20]
    assert data["images_per_cell"] == 12 and len(data["cells"]) == 9
    for cell in data["cells"]:
        images = sorted(Path(cell["folder"]).glob("*.png"))
        assert len(images) == 12
        recipe = read_recipe(images[0])["recipe"]  # each cell's images carry the recipe that made them
        assert (recipe["scheduler"], recipe["steps"], recipe["cfg"]) == (cell["sampler"], cell["value"], 5.0)
        assert cell["score"] == cell["rates"]["all"]
    for sampler, scores in data["series"].items():
        assert scores[2] > scores[0], (sampler, scores)  # adherence rises from 2 to 20 steps
    first, last = ([(read_recipe(p)["recipe"]["prompt"], read_recipe(p)["recipe"]["seed"])
                    for p in sorted(Path(data["cells"][i]["folder"]).glob("*.png"))] for i in (0, 8))  # fmt: skip
    assert first == last and len({seed for _, seed in first}) == 12  # the same prompts and seeds in every cell

    width, height = readable_png(out / "sweep.grid.png")
    assert width >= 3 * 128 and height >= 3 * 128  # three columns and three rows of enlarged 64 px cells
    readable_png(out / "sweep.plot.png")
    assert [Path(f) for f in report.written] == [out / "sweep.json", out / "sweep.plot.png", out / "sweep.grid.png"]


def test_sweep_cfg_axis_scored_by_clip_agrees_with_clip_score(tmp_path: Path, tiny_clip_dir: Path) -> None:
    args = ["eval", "sweep", "a red circle on a blue background", "--metric", "clip", "--clip-model", tiny_clip_dir,
            "--axis", "cfg", "--values", "1", "--values", "5", "--samplers", "Euler", "--steps", "4",
            "--num-images", "2", "--seed", "5", "-o", tmp_path / "out", "--json"]  # fmt: skip
    result = invoke(*args)
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["axis"] == "cfg" and len(data["series"]["Euler"]) == 2
    for cell in data["cells"]:
        alone = invoke("eval", "clip-score", cell["folder"], "--clip-model", tiny_clip_dir, "--json")
        assert json.loads(alone.stdout)["mean"] == pytest.approx(cell["score"], abs=1e-4)  # same images, same number
        assert {read_recipe(p)["recipe"]["cfg"] for p in Path(cell["folder"]).glob("*.png")} == {cell["value"]}


def test_sweep_lora_weight_axis(tmp_path: Path, tiny_sd_dir: Path, tiny_clip_dir: Path) -> None:
    from diffusers import StableDiffusionPipeline
    from test_generate_adapters import _lora_state

    _, state = _lora_state(tiny_sd_dir, "StableDiffusionPipeline", 1)
    StableDiffusionPipeline.save_lora_weights(tmp_path / "lora", unet_lora_layers=state)
    lora = tmp_path / "lora" / "pytorch_lora_weights.safetensors"
    result = invoke("eval", "sweep", "a cat", "-m", tiny_sd_dir, "--lora", lora, "--axis", "lora-weight", "--values", "0",
                    "--values", "1", "--samplers", "Euler", "--steps", "2", "--metric", "clip", "--clip-model", tiny_clip_dir,
                    "--seed", "1", "-o", tmp_path / "out", "--json")  # fmt: skip
    assert result.exit_code == 0, result.output
    off, on = (sorted(Path(c["folder"]).glob("*.png"))[0] for c in json.loads(result.stdout)["cells"])
    assert [read_recipe(p)["recipe"]["lora"][0]["weight"] for p in (off, on)] == [0.0, 1.0]
    assert np.abs(pixels(off) - pixels(on)).max() > 0  # the weight reached the pipeline


def test_sweep_errors_write_nothing(tmp_path: Path) -> None:
    before = snapshot(tmp_path)
    out = ["-o", tmp_path / "out"]
    assert_user_error(invoke("eval", "sweep", "a red circle on a blue background", "--samplers", "Eulr", *out), "Eulr")
    assert_user_error(invoke("eval", "sweep", "a photo of a cat", *out), "metric shapes", "--world-prompts")
    assert_user_error(invoke("eval", "sweep", "x", "--axis", "lora-weight", *out), "exactly one --lora")
    assert_user_error(invoke("eval", "sweep", "x", "--values", "2.5", *out), "whole numbers")
    assert_user_error(invoke("eval", "sweep", *out), "--world-prompts")
    assert snapshot(tmp_path) == before


def test_sweep_at_a_terminal(tmp_path: Path) -> None:
    screen = in_terminal([SDKIT, "eval", "sweep", "--world-prompts", "1", "--samplers", "Euler", "--samplers", "DDIM",
                          "--values", "1", "--values", "2", "-o", "out"], tmp_path)  # fmt: skip
    assert_clean_run(screen, "shapes adherence", "sampler / steps", "DDIM")
    assert_progress(screen)
    assert (tmp_path / "out/sweep.plot.png").is_file()


# --- sdkit schedulers --plot -------------------------------------------------------------------------------------


def test_schedule_plot_karras_and_uniform_differ(tmp_path: Path) -> None:
    import diffusers

    from sdkit.plots import schedule_of

    config = json.loads((Path(__file__).parents[1] / "sdkit/assets/shapes/scheduler/scheduler_config.json").read_text())
    karras, uniform = (schedule_of(name, config, 20) for name in ("DPM++ 2M Karras", "DPM++ 2M"))
    assert len(karras.sigmas) == len(uniform.sigmas) == 21
    assert not np.allclose(karras.sigmas[1:-1], uniform.sigmas[1:-1])
    own = diffusers.DPMSolverMultistepScheduler.from_config(config, use_karras_sigmas=True)
    own.set_timesteps(20)
    assert np.allclose(karras.sigmas, own.sigmas.numpy()) and karras.timesteps == [float(t) for t in own.timesteps]

    result = invoke("schedulers", "--plot", "DPM++ 2M Karras", "--plot", "DPM++ 2M", "--steps", "20", "-o", tmp_path / "s.png")
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == str(tmp_path / "s.png")
    width, height = readable_png(tmp_path / "s.png")
    assert width > 600 and height > 250
    assert_user_error(invoke("schedulers", "--plot", "Eulr", "-o", tmp_path / "x.png"), "Eulr")
    assert_user_error(invoke("schedulers", "--plot", "Euler", "-o", tmp_path / "x.jpg"), ".png")
    assert not (tmp_path / "x.png").exists()
