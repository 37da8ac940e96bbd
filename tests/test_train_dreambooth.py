"""`sdkit train dreambooth` on the tiny SD pipeline: full fine-tune with prior preservation (class images generated
once, then reused), the LoRA variant and its files, the prior-preservation batch, and one-line errors."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from helpers import assert_user_error, generate, in_memory, invoke, shapes_dataset, snapshot, tensors

from sdkit.lora_io import LORA_FILE
from sdkit.schema.finetune import TrainDreamBoothRecipe
from sdkit.tasks.train_dreambooth import PROMPT_KEY, DreamBoothData, run

FAST = ["--threads", "1", "--log-every", "1", "--learning-rate", "0.01"]
CLASS = ["--with-prior-preservation", "--class-prompt", "a shape", "--num-class-images", "3", "--class-inference-steps", "2"]


@pytest.fixture(scope="module")
def instances(tmp_path_factory) -> Path:
    """Three 32 px images in a plain folder (no captions)."""
    return shapes_dataset(tmp_path_factory.mktemp("db") / "shapes", n=3) / "images"


def unet_weights(model_dir: Path) -> dict:
    return {f"{sub}.{k}": v for sub in ("unet", "text_encoder", "vae")
            for f in (model_dir / sub).glob("*.safetensors") for k, v in tensors(f).items()}  # fmt: skip


def test_full_fine_tune_with_prior_preservation(tiny_sd_dir: Path, instances: Path, tmp_path: Path) -> None:
    from diffusers import StableDiffusionPipeline

    classes = tmp_path / "classes"
    args = ["train", "dreambooth", "-m", tiny_sd_dir, "--instance-data", instances, "--instance-prompt", "a sks shape",
            "--max-steps", "2", "--class-data", classes, *CLASS, *FAST]  # fmt: skip
    first = invoke(*args, "-o", tmp_path / "a", "--validation-prompts", "a sks shape", "--validation-inference-steps", "2")
    assert first.exit_code == 0, first.output
    assert first.stdout.split() == [str(tmp_path / "a/model")]
    made = sorted(classes.glob("*.png"))
    assert [p.name for p in made] == ["class-00000.png", "class-00001.png", "class-00002.png"]
    assert "generating 3 class images" in first.stderr and (tmp_path / "a/validation/step-2.png").is_file()
    before, after = unet_weights(tiny_sd_dir), unet_weights(tmp_path / "a/model")
    assert any(not (before[k] == after[k]).all() for k in before if k.startswith("unet."))
    assert all((before[k] == after[k]).all() for k in before if not k.startswith("unet."))  # only the UNet trained
    StableDiffusionPipeline.from_pretrained(tmp_path / "a/model")  # a plain diffusers folder
    saved = TrainDreamBoothRecipe.model_validate(yaml.safe_load((tmp_path / "a/recipe.yaml").read_text()))
    assert saved.learning_rate == 0.01 and saved.lora is False  # the resolved recipe validates again

    stamps = {p: p.stat().st_mtime_ns for p in made}
    second = invoke(*args, "-o", tmp_path / "b", "--num-class-images", "4")  # 3 cached, 1 more generated
    assert second.exit_code == 0, second.output
    assert "generating 1 class images" in second.stderr
    assert {p: p.stat().st_mtime_ns for p in made} == stamps and (classes / "class-00003.png").is_file()
    from PIL import Image

    with Image.open(classes / "class-00003.png") as image:
        assert image.text[PROMPT_KEY] == "a shape"


def test_lora_variant_saves_loadable_lora_files(tiny_sd_dir: Path, instances: Path, tmp_path: Path) -> None:
    recipe = TrainDreamBoothRecipe(  # an imagefolder: the prompt is filled from each image's metadata
        model=str(tiny_sd_dir), instance_data_dir=instances.parent, instance_prompt="a {color} sks shape on a {background} background",
        output_dir=tmp_path / "run",
        lora=True, rank=2, save_format="kohya", output_name="sks-shape", max_steps=2, learning_rate=0.05,
        with_prior_preservation=True, class_prompt="a shape", num_class_images=2, class_inference_steps=2, threads=1,
        checkpointing_steps=None,
    )  # fmt: skip
    result = run(recipe)
    assert [p.name for p in result.files] == [LORA_FILE, "sks-shape.safetensors"]
    assert len(list((tmp_path / "run/class_images").glob("*.png"))) == 2  # default class folder: OUT/class_images
    memory = in_memory(result.pipeline, "a sks shape")
    for path in result.files:
        assert (generate(tmp_path / path.stem, tiny_sd_dir, "a sks shape", "--lora", path) == memory).all(), path.name
    assert not (tmp_path / "run/model").exists()


def test_prior_batch_puts_class_images_after_instances() -> None:
    import torch

    instances = [{"pixels": torch.full((3, 4, 4), i, dtype=torch.uint8)} for i in range(2)]
    classes = [{"pixels": torch.full((3, 4, 4), 10 + j, dtype=torch.uint8)} for j in range(5)]
    data = DreamBoothData(instances, ["i0", "i1"], classes, [f"c{j}" for j in range(5)])
    assert len(data) == 5  # every class image is seen each epoch
    batch = data.collate([data[0], data[3]])
    assert batch["prior"].tolist() == [False, False, True, True]
    assert batch["pixels"][:, 0, 0, 0].tolist() == [0, 1, 10, 13]  # instance i mod 2, class i mod 5
    assert batch["caption"] == ["i0", "i1", "c0", "c3"]  # each image with its own prompt


def test_errors_are_one_line(tiny_sd_dir: Path, instances: Path, tmp_path: Path) -> None:
    base = ["train", "dreambooth", "-m", tiny_sd_dir, "--instance-prompt", "a sks shape", "-o", tmp_path / "o"]
    before = snapshot(tmp_path)
    assert_user_error(invoke(*base, "--instance-data", tmp_path / "none"), "instance data folder", "does not exist")
    (tmp_path / "empty").mkdir()
    assert_user_error(invoke(*base, "--instance-data", tmp_path / "empty"), "holds no images")
    assert_user_error(invoke(*base, "--instance-data", instances, "--with-prior-preservation"), "class_prompt")
    templated = ["--instance-prompt", "a {colour} sks shape"]
    assert_user_error(invoke(*base, "--instance-data", instances, *templated), "no metadata.jsonl")
    assert_user_error(invoke(*base, "--instance-data", instances.parent, *templated), "no 'colour' column")
    assert_user_error(invoke(*base, "--instance-data", instances, "--rank", "8"), "rank applies only with lora")
    assert_user_error(invoke(*base, "--instance-data", instances, "--lora", "--model", tmp_path / "nomodel"), "not found")
    assert snapshot(tmp_path) == before and not (tmp_path / "o").exists()


def test_captioned_class_images_are_used_as_they_are(tiny_sd_dir: Path, instances: Path, tmp_path: Path) -> None:
    regular = shapes_dataset(tmp_path / "regular", n=3)  # an imagefolder: each class image with its own caption
    before = snapshot(regular)
    recipe = TrainDreamBoothRecipe(
        model=str(tiny_sd_dir), instance_data_dir=instances, instance_prompt="a sks shape", output_dir=tmp_path / "run",
        with_prior_preservation=True, class_prompt="a shape", class_data_dir=regular, num_class_images=2,
        max_steps=1, threads=1, checkpointing_steps=None,
    )  # fmt: skip
    result = run(recipe)
    assert result.info["class_images"] == 2 and snapshot(regular) == before  # nothing generated or changed


def test_caption_dropout_trains_on_the_empty_caption(tiny_sd_dir: Path, instances: Path, tmp_path: Path) -> None:
    """With caption_dropout 1 every image trains on the empty caption, so the prompt no longer changes the result."""

    def trained(prompt: str, dropout: float, name: str) -> dict:
        recipe = TrainDreamBoothRecipe(
            model=str(tiny_sd_dir), instance_data_dir=instances, instance_prompt=prompt, output_dir=tmp_path / name,
            caption_dropout=dropout, max_steps=2, learning_rate=0.01, threads=1, checkpointing_steps=None,
        )  # fmt: skip
        run(recipe)
        return unet_weights(tmp_path / name / "model")

    a, b = trained("a sks shape", 1.0, "a"), trained("a red square", 1.0, "b")
    assert all((a[k] == b[k]).all() for k in a)
    c, d = trained("a sks shape", 0.0, "c"), trained("a red square", 0.0, "d")
    assert any(not (c[k] == d[k]).all() for k in c)
