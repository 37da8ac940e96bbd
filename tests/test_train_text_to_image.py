"""`sdkit.tasks.train_text_to_image` on tiny real models: outputs, exact resume, SIGINT, accelerate launch, YAML."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from sdkit.errors import UserError
from sdkit.schema.train import TrainTextToImageRecipe
from sdkit.tasks import train_text_to_image
from sdkit.training import checkpoints as ckpt


def run(recipe) -> Path:
    """The trained result folder (what `sdkit train` prints first)."""
    return train_text_to_image.run(recipe).files[0]

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
FAST = {"preset": "tiny-sd", "train_batch_size": 3, "threads": 1, "log_every": 1, "validation_inference_steps": 2}


@pytest.fixture(scope="module")
def shapes_data(tmp_path_factory) -> Path:
    from sdkit.data.shapes import write_dataset

    return write_dataset(tmp_path_factory.mktemp("data") / "shapes", 10, seed=0, size=32)


def recipe(data: Path, out: Path, **fields) -> TrainTextToImageRecipe:
    return TrainTextToImageRecipe(data_dir=data, output_dir=out, **{**FAST, **fields})


def weights(model_dir: Path) -> dict:
    from safetensors.torch import load_file

    return {
        f"{sub}.{k}": v
        for sub in ("unet", "text_encoder", "vae")
        for file in sorted((model_dir / sub).glob("*.safetensors"))
        for k, v in load_file(file).items()
    }


def test_preset_run_writes_a_loadable_pipeline(shapes_data, tmp_path):
    import torch
    from diffusers import StableDiffusionPipeline

    prompts = ["a red circle on a blue background"]
    model_dir = run(recipe(shapes_data, tmp_path, max_steps=4, validation_prompts=prompts, validation_steps=2, checkpointing_steps=2))
    assert model_dir == tmp_path / "model"
    for name in ("validation/step-2.png", "validation/step-4.png", "loss.png", "loss.json", "loss.csv", "run.json"):
        assert (tmp_path / name).is_file(), name
    saved = TrainTextToImageRecipe.model_validate(yaml.safe_load((tmp_path / "recipe.yaml").read_text()))
    assert saved.max_steps == 4 and saved.validation_prompts == prompts
    pipe = StableDiffusionPipeline.from_pretrained(model_dir)  # plain diffusers, nothing sdkit-specific
    image = pipe(prompts[0], num_inference_steps=2, generator=torch.Generator().manual_seed(0)).images[0]
    assert image.size == (32, 32)
    assert all(p.suffix != ".bin" for p in model_dir.rglob("*.*") if "model" in p.stem)  # safetensors only


def test_fine_tune_v_prediction_zero_snr_bf16_cached_latents(shapes_data, tiny_sd_dir, tmp_path):
    model_dir = run(
        recipe(shapes_data, tmp_path, preset=None, model=str(tiny_sd_dir), max_steps=2, cache_latents=True,
               prediction_type="v_prediction", rescale_betas_zero_snr=True, mixed_precision="bf16",
               checkpointing_steps=None, validation_prompts=["a red circle"])
    )  # fmt: skip
    scheduler = json.loads((model_dir / "scheduler/scheduler_config.json").read_text())
    assert scheduler["prediction_type"] == "v_prediction" and scheduler["rescale_betas_zero_snr"] is True
    assert scheduler["timestep_spacing"] == "trailing"
    assert json.loads((model_dir / "unet/config.json").read_text())["_diffusers_version"]  # a plain diffusers folder
    before, after = weights(tiny_sd_dir), weights(model_dir)
    assert any(not (before[k] == after[k]).all() for k in before if k.startswith("unet."))
    assert all((before[k] == after[k]).all() for k in before if not k.startswith("unet."))  # frozen: saved bit-exact


def test_vae_stage_measures_scaling_factor(shapes_data, tmp_path):
    model_dir = run(recipe(shapes_data, tmp_path, stage="vae", max_steps=2, checkpointing_steps=None))
    config = json.loads((model_dir / "vae/config.json").read_text())
    assert config["scaling_factor"] != 0.18215 and config["scaling_factor"] > 0
    assert (tmp_path / "validation/step-2.png").is_file()  # originals beside reconstructions


def test_decoder_only_vae_fine_tune_keeps_the_latent_space(shapes_data, tiny_sd_dir, tmp_path):
    model_dir = run(recipe(shapes_data, tmp_path, preset=None, model=str(tiny_sd_dir), stage="vae", max_steps=2,
                           train_vae_encoder=False, checkpointing_steps=None))  # fmt: skip
    before, after = weights(tiny_sd_dir), weights(model_dir)
    frozen = [k for k in before if k.startswith(("vae.encoder.", "vae.quant_conv."))]
    trained = [k for k in before if k.startswith(("vae.decoder.", "vae.post_quant_conv."))]
    assert frozen and trained
    assert all((before[k] == after[k]).all() for k in frozen)  # same encoder: the same latents for every image
    assert any(not (before[k] == after[k]).all() for k in trained)
    config = lambda d: json.loads((d / "vae/config.json").read_text())["scaling_factor"]  # noqa: E731
    assert config(model_dir) == config(tiny_sd_dir)
    with pytest.raises(ValueError, match="decoder-only"):
        recipe(shapes_data, tmp_path, stage="vae", train_vae_encoder=False)  # a preset has no encoder worth keeping


def test_resume_from_a_checkpoint_is_exact(shapes_data, tmp_path):
    # 10 images, batch 3, 2 micro-batches per step; EMA, text encoder, caption dropout and a cosine schedule all on.
    fields = {"max_steps": 5, "gradient_accumulation_steps": 2, "checkpointing_steps": 3, "use_ema": True,
              "train_text_encoder": True, "caption_dropout": 0.3, "lr_scheduler": "cosine", "lr_warmup_steps": 1}  # fmt: skip
    full = run(recipe(shapes_data, tmp_path / "full", **fields))
    resumed = run(recipe(shapes_data, tmp_path / "resumed", resume=str(tmp_path / "full/checkpoints/step-3"), **fields))
    a, b = weights(full), weights(resumed)
    assert a.keys() == b.keys()
    assert all((a[k] == b[k]).all() for k in a), "resumed weights differ from the uninterrupted run"


def test_resume_errors_come_before_any_work(shapes_data, tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        run(recipe(shapes_data, tmp_path / "out", resume=str(tmp_path / "nowhere")))
    assert not (tmp_path / "out").exists()
    with pytest.raises(UserError, match="no images and no metadata.jsonl"):
        run(recipe(tmp_path, tmp_path / "out"))


def test_sigint_saves_a_checkpoint_and_resume_matches(shapes_data, tmp_path):
    job = {"task": "train-text-to-image", **FAST, "data_dir": str(shapes_data), "output_dir": str(tmp_path / "run"),
           "max_steps": 10_000, "checkpointing_steps": None, "use_ema": True}  # fmt: skip
    (tmp_path / "job.yaml").write_text(yaml.safe_dump(job))
    proc = subprocess.Popen(
        [sys.executable, "-m", "sdkit", "run", str(tmp_path / "job.yaml")],
        cwd=tmp_path, env=ENV, stderr=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    lines = []
    deadline = time.monotonic() + 120
    for line in proc.stderr:
        lines.append(line)
        if line.startswith("step 2/") or time.monotonic() > deadline:
            break
    proc.send_signal(signal.SIGINT)
    _, rest = proc.communicate(timeout=60)
    log = "".join(lines) + rest
    assert proc.returncode == 130, log
    assert "stopped by SIGINT at step" in log and "--resume latest" in log
    latest = ckpt.latest_checkpoint(tmp_path / "run")
    assert latest is not None, log
    step = ckpt.read_marker(latest)["step"]
    assert 2 <= step < 10_000 and not (tmp_path / "run/model").exists()

    # Resuming to step+2 ends where an uninterrupted run of step+2 steps ends (constant LR: max_steps changes nothing).
    job.update(max_steps=step + 2, log_every=100)
    resumed = run(TrainTextToImageRecipe.model_validate({**job, "resume": "latest"}))
    fresh = run(TrainTextToImageRecipe.model_validate({**job, "output_dir": str(tmp_path / "fresh")}))
    a, b = weights(resumed), weights(fresh)
    assert all((a[k] == b[k]).all() for k in a)


@pytest.mark.slow  # multi-process or end to end
def test_accelerate_launch_two_processes(shapes_data, tmp_path):
    # Two jobs in one launch: a VAE stage, then a bf16 UNet stage on its output (accelerate state reset in between).
    common = {"task": "train-text-to-image", **FAST, "data_dir": str(shapes_data), "checkpointing_steps": 1}
    jobs = [{**common, "name": "vae", "stage": "vae", "output_dir": str(tmp_path / "vae"), "max_steps": 1},
            {**common, "preset": None, "model": "${jobs.vae.output}", "output_dir": str(tmp_path / "run"), "max_steps": 2,
             "train_text_encoder": True, "mixed_precision": "bf16"}]  # fmt: skip
    (tmp_path / "job.yaml").write_text(yaml.safe_dump({"jobs": jobs}))
    accelerate = Path(sys.executable).parent / "accelerate"
    cmd = [str(accelerate), "launch", "--multi_gpu", "--num_processes", "2", "--num_cpu_threads_per_process", "1",
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
           "-m", "sdkit", "run", str(tmp_path / "job.yaml")]  # fmt: skip
    done = subprocess.run(cmd, cwd=tmp_path, env=ENV, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    info = json.loads((tmp_path / "run/run.json").read_text())
    assert info["distributed_type"] == "MULTI_CPU" and info["num_processes"] == 2  # really two processes
    assert sorted(p.name for p in (tmp_path / "run/checkpoints/step-2").glob("random_states_*")) == [
        "random_states_0.pkl", "random_states_1.pkl"]  # fmt: skip
    assert (tmp_path / "run/model/model_index.json").is_file()


def test_shapes_base_recipe_validates():
    from sdkit.jobs.parse import check_references, load_file

    jobs = load_file(ROOT / "recipes/train/shapes-base.yaml")  # every job validated against its schema
    check_references(jobs)
    tasks = ["data-shapes", "data-shapes", *["train-text-to-image"] * 5, *["data-shapes", "train-text-to-image"] * 3]
    assert [j.task.name for j in jobs] == tasks
    vae, unet, more, decoder, stage5, stage6, stage7, last = (
        TrainTextToImageRecipe.model_validate({**j.raw, "model": j.raw.get("model") and "x"})
        for j in jobs
        if j.task.name == "train-text-to-image"
    )
    assert (vae.stage, vae.preset, unet.stage, unet.prediction_type) == ("vae", "shapes", "unet", "v_prediction")
    assert (more.stage, more.prediction_type, jobs[4].raw["model"]) == ("unet", "v_prediction", "${jobs.unet.output}")
    # the decoder-only VAE stage keeps the latent space; the last UNet stage continues on its output
    assert (decoder.stage, decoder.train_vae_encoder, jobs[5].raw["model"]) == ("vae", False, "${jobs.unet2.output}")
    assert (stage5.stage, stage5.prediction_type, jobs[6].raw["model"]) == ("unet", "v_prediction", "${jobs.decoder.output}")
    # v4: stage 6 continues stage 5 at a lower learning rate on the larger dataset of job 8
    assert (stage6.stage, jobs[8].raw["model"], str(stage6.data_dir)) == ("unet", "${jobs.unet3.output}", jobs[7].raw["out"])
    assert stage6.learning_rate < stage5.learning_rate
    # v5: stage 7 continues stage 6 on job 10's noisy captions (the images are clean renders)
    assert (stage7.stage, jobs[10].raw["model"], str(stage7.data_dir)) == ("unet", "${jobs.unet4.output}", jobs[9].raw["out"])
    # the shipped model: stage 8 continues stage 7 on job 12's wider world, its new shape names added as words
    assert (last.stage, jobs[12].raw["model"], str(last.data_dir)) == ("unet", "${jobs.unet6.output}", jobs[11].raw["out"])
    from sdkit.data.world import BASE_SHAPES
    from sdkit.schema.data import ShapesDataRecipe

    data = [ShapesDataRecipe.model_validate(jobs[i].raw) for i in (7, 9, 11)]
    assert data[0].caption_noise == 0 and data[1].caption_noise > 0 and data[2].caption_noise > 0 and data[2].generic_noun > 0
    assert data[0].shapes is None and last.train_text_encoder  # the base set, whose names the tokenizer has
    assert set(last.add_words) == set(data[2].shapes) - set(BASE_SHAPES) and "star" not in data[2].shapes


def test_add_words_makes_new_single_tokens_that_train_and_reload(tmp_path, tiny_sd_dir):
    import torch

    from sdkit.data.shapes import write_dataset
    from sdkit.models import load_pipeline, resolve_model
    from sdkit.tokenizer import load_tokenizer

    def load(path):
        return load_pipeline(resolve_model(str(path), hash_local=False), torch_dtype=torch.float32)

    data = write_dataset(tmp_path / "data", 6, seed=1, size=32, shapes=["heart", "crescent"])
    meta = data / "metadata.jsonl"  # captions naming the shapes with words the tokenizer lacks
    meta.write_text(meta.read_text().replace(" heart on", " blob on").replace(" crescent on", " wedge on"))
    before = load(tiny_sd_dir)
    assert len(before.tokenizer.encode("wedge", add_special_tokens=False)) > 1  # characters so far
    model_dir = run(recipe(data, tmp_path / "run", preset=None, model=str(tiny_sd_dir), max_steps=2, train_text_encoder=True,
                           add_words=["blob", "circle", "wedge"], checkpointing_steps=None))  # fmt: skip
    after = load(model_dir)  # sdkit's loader checks the tokenizer's size against its files
    ids = after.tokenizer.convert_tokens_to_ids(["blob", "wedge"])
    assert after.tokenizer.encode("a red wedge", add_special_tokens=False)[-1] == ids[1]
    rows = after.text_encoder.get_input_embeddings().weight
    assert rows.shape[0] == len(after.tokenizer) == len(before.tokenizer) + 2  # "circle" was one token: kept
    assert after.tokenizer.convert_tokens_to_ids("circle</w>") == before.tokenizer.convert_tokens_to_ids("circle</w>")
    assert after.text_encoder.config.vocab_size == len(after.tokenizer)
    legacy = tmp_path / "legacy"  # what transformers 4's slow CLIPTokenizer reads: no tokenizer.json
    legacy.mkdir()
    for name in ("vocab.json", "merges.txt", "tokenizer_config.json", "added_tokens.json"):
        shutil.copy(model_dir / "tokenizer" / name, legacy / name)
    for prompt in ("a red wedge on a blue blob", "a green circle on a white background"):
        assert load_tokenizer(legacy)(prompt).input_ids == after.tokenizer(prompt).input_ids
    old_rows = before.text_encoder.get_input_embeddings().weight.detach()
    assert not torch.equal(rows[: len(old_rows)], old_rows)  # the text encoder trained
    moved = (rows[ids].detach() - old_rows.mean(0)).norm(dim=1)  # mean resizing starts them at the old rows' mean
    assert (moved < 0.25 * old_rows.norm(dim=1).mean()).all() and (moved > 1e-4).all(), moved  # ... and they trained


def test_add_words_errors(tmp_path, tiny_sd_dir, shapes_data):
    with pytest.raises(ValueError, match="add_words needs a model to fine-tune"):
        recipe(shapes_data, tmp_path, add_words=["heart"], train_text_encoder=True)  # a preset
    with pytest.raises(ValueError, match="add_words needs"):
        recipe(shapes_data, tmp_path, preset=None, model=str(tiny_sd_dir), add_words=["heart"])  # frozen text encoder
    with pytest.raises(ValueError, match="distinct lower-case words"):
        recipe(shapes_data, tmp_path, preset=None, model=str(tiny_sd_dir), add_words=["Heart"], train_text_encoder=True)


def test_data_names_the_dataset_for_every_trainer(tmp_path):
    """`--data` (the README's spelling) is accepted by text-to-image as by the other trainers: the error is about the
    missing folder, not an unknown option."""
    from helpers import assert_user_error, invoke

    for task, *extra in (["text-to-image"], ["lora"], ["controlnet"], ["textual-inversion", "--token", "<zig>", "--init-token", "triangle"]):
        args = ["train", task, "-m", "shapes", "--data", tmp_path / "nowhere", "-o", tmp_path / task, *extra]
        assert_user_error(invoke(*args), "nowhere")
