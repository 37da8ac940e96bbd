"""A1111 infotext written and read as A1111 1.10 writes and reads it (sdkit.infotext), checked against A1111's own
reading rules, which this file restates from A1111's documented format (modules/infotext_utils.py re_param and
parse_generation_parameters, modules/sd_samplers.py get_sampler_and_scheduler); images from A1111, civitai (JPEG and
WEBP EXIF) and ComfyUI replay to the recipe they describe."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from helpers import assert_user_error, invoke, pixels
from PIL import Image
from PIL.PngImagePlugin import PngInfo

from sdkit import image_import, infotext, schedulers
from sdkit.errors import UserError
from sdkit.models import ModelRef
from sdkit.schema.generate import GenerateRecipe

# --- A1111's reading rules, restated from its documented format ------------------------------------------------

A1111_PARAM = re.compile(r'\s*(\w[\w \-/]+):\s*("(?:\\.|[^\\"])+"|[^,]*)(?:,|$)')  # infotext_utils.re_param_code
A1111_SAMPLERS = {"DPM++ 2M": "karras", "DPM++ SDE": "karras", "DPM++ 2M SDE": "exponential",
                  "DPM++ 2M SDE Heun": "exponential", "DPM++ 2S a": "karras", "DPM++ 3M SDE": "exponential",
                  "Euler a": None, "Euler": None, "LMS": None, "Heun": None, "DPM2": "karras", "DPM2 a": "karras",
                  "DPM fast": None, "DPM adaptive": None, "Restart": "karras", "DDIM": None, "DDIM CFG++": None,
                  "PLMS": None, "UniPC": None, "LCM": None}  # label -> options['scheduler'] (sd_samplers_*.py, 1.10)
A1111_SCHEDULES = [("automatic", "Automatic", []), ("uniform", "Uniform", []), ("karras", "Karras", []),
                   ("exponential", "Exponential", []), ("polyexponential", "Polyexponential", []),
                   ("sgm_uniform", "SGM Uniform", ["SGMUniform"]), ("kl_optimal", "KL Optimal", []),
                   ("align_your_steps", "Align Your Steps", []), ("simple", "Simple", []), ("normal", "Normal", []),
                   ("ddim", "DDIM", []), ("beta", "Beta", [])]  # sd_schedulers.schedulers: name, label, aliases


def a1111_parse(text: str) -> dict[str, str]:
    """parse_generation_parameters, the parts that decide the sampler, schedule, prompts and values."""
    *lines, last = text.strip().split("\n")
    if len(A1111_PARAM.findall(last)) < 3:
        lines.append(last)
        last = ""
    prompt, negative, done = "", "", False
    for line in lines:
        line = line.strip()
        if line.startswith("Negative prompt:"):
            done, line = True, line[16:].strip()
        if done:
            negative += ("" if negative == "" else "\n") + line
        else:
            prompt += ("" if prompt == "" else "\n") + line
    res = {}
    for k, v in A1111_PARAM.findall(last):
        if v[0] == '"' and v[-1] == '"':
            try:
                v = json.loads(v)
            except ValueError:
                pass
        m = re.match(r"^(\d+)x(\d+)$", v)
        if m:
            res[f"{k}-1"], res[f"{k}-2"] = m.group(1), m.group(2)
        else:
            res[k] = v
    res.update(Prompt=prompt, **{"Negative prompt": negative})
    res.setdefault("Clip skip", "1")
    res.setdefault("Schedule type", "Automatic")
    return res


def a1111_sampler_and_scheduler(sampler_name: str | None, scheduler_name: str | None) -> tuple[str, str]:
    """get_sampler_and_scheduler(convert_automatic=True): a schedule named at the end of the sampler wins; the sampler's
    own default schedule reads as Automatic; unknown names fall back to the first sampler and Automatic."""
    by_name = {name: (name, label) for name, label, _ in A1111_SCHEDULES} | {label: (name, label) for name, label, _ in A1111_SCHEDULES}
    found = by_name.get(scheduler_name, A1111_SCHEDULES[0][:2])
    name = sampler_name or "DPM++ 2M"
    for sched_name, label, aliases in A1111_SCHEDULES:
        for option in (label, sched_name, *aliases):
            if name.endswith(" " + option):
                found, name = (sched_name, label), name[: -(len(option) + 1)]
                break
    sampler = name if name in A1111_SAMPLERS else "DPM++ 2M"
    if A1111_SAMPLERS[sampler] == found[0]:
        found = A1111_SCHEDULES[0][:2]
    return sampler, found[1]


def a1111_runs(sampler: str, label: str) -> str:
    """The schedule A1111 runs for a sampler and the schedule type it read: Automatic is the sampler's own default."""
    if label != "Automatic":
        return label
    default = A1111_SAMPLERS[sampler]
    return next(lab for name, lab, _ in A1111_SCHEDULES if name == default) if default else "Uniform"


# --- writing ---------------------------------------------------------------------------------------------------

SD15_LIKE = {"num_train_timesteps": 1000, "beta_schedule": "scaled_linear", "timestep_spacing": "leading", "steps_offset": 1}
ZERO_SNR = {**SD15_LIKE, "timestep_spacing": "trailing", "rescale_betas_zero_snr": True, "prediction_type": "v_prediction"}
MODEL = ModelRef("tiny", "folder", "/models/tiny, v1: x", "ab" * 32)


def written(recipe: GenerateRecipe, base: dict) -> str:
    choice = schedulers.resolve(recipe.scheduler, recipe.schedule_type)
    return infotext.parameters(recipe, MODEL, (32, 48), schedulers.written_schedule(choice, base))


def test_quote_follows_a1111() -> None:
    assert infotext.quote("Euler a") == "Euler a" and infotext.quote(7.0) == "7.0"
    assert infotext.quote("tiny, v1: x") == '"tiny, v1: x"'
    assert infotext.quote('say "hi": now') == '"say \\"hi\\": now"'
    assert infotext.quote("two\nlines") == '"two\\nlines"'


def test_written_infotext_reads_back_under_a1111s_rules(tmp_path: Path) -> None:
    lora = tmp_path / "style.safetensors"
    lora.write_bytes(b"not really weights, only hashed")
    recipe = GenerateRecipe(prompt="a (red:1.2) cat, sitting", negative="blurry, lowres", seed=4242, steps=12, cfg=6.5,
                            scheduler="DPM++ 2M", clip_skip=2, lora=[f"{lora}:0.7"], init_image=None)
    text = written(recipe, SD15_LIKE)
    lines = text.splitlines()
    assert lines[0] == "a (red:1.2) cat, sitting <lora:style:0.7>" and lines[1] == "Negative prompt: blurry, lowres"
    assert lines[2].startswith("Steps: 12, Sampler: DPM++ 2M, Schedule type: Karras, CFG scale: 6.5, Seed: 4242, "
                               'Size: 32x48, Model hash: ababababab, Model: "tiny, v1: x", Clip skip: 2, RNG: CPU, ')
    assert re.search(r'Lora hashes: "style: [0-9a-f]{12}"', lines[2]) and lines[2].endswith(", Version: sdkit " + __import__("sdkit").__version__)
    a1111 = a1111_parse(text)
    assert a1111["Model"] == "tiny, v1: x" and a1111["Clip skip"] == "2" and a1111["Size-1"] == "32"
    assert a1111["Prompt"] == lines[0] and a1111["Negative prompt"] == "blurry, lowres"
    assert a1111_sampler_and_scheduler(a1111["Sampler"], a1111["Schedule type"]) == ("DPM++ 2M", "Automatic")  # = Karras


@pytest.mark.parametrize("base", [SD15_LIKE, ZERO_SNR], ids=["sd15", "zero-snr"])
def test_every_sampler_and_schedule_round_trips(base: dict) -> None:
    """sdkit's infotext for each sampler/schedule, read by A1111's rules, names the same diffusers configuration; where
    A1111 knows the sampler, the schedule A1111 runs is the one sdkit ran."""
    for sampler in schedulers.SAMPLERS:
        for schedule in schedulers.types_for(sampler):
            recipe = GenerateRecipe(prompt="a cat", seed=1, scheduler=sampler.name, schedule_type=schedule)
            choice = schedulers.resolve(sampler.name, schedule)
            a1111 = a1111_parse(written(recipe, base))
            read = schedulers.resolve(*infotext.sampler_and_schedule(a1111["Sampler"], a1111["Schedule type"]))
            assert read.config(base) == choice.config(base), (sampler.name, schedule)
            if sampler.name in A1111_SAMPLERS and sampler.automatic:  # A1111's k-diffusion samplers
                runs = a1111_runs(*a1111_sampler_and_scheduler(a1111["Sampler"], a1111["Schedule type"]))
                again = schedulers.resolve(sampler.name, runs)
                assert again.config(base) == choice.config(base), (sampler.name, schedule, runs)


# --- reading ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("line", [
    "Steps: 20, Sampler: Euler a, CFG scale: 7, Seed: 965400086, Size: 512x512, Model hash: 45dee52b",
    'Steps: 20, Model: "tiny, v1: x", Lora hashes: "a: 1, b: 2", Note: "un\\"closed, Seed: 3',
    'a: "x" y, b: 1, bb:  "q",  c-d/e f: 3, :4, x:, z',
    ' ,,junk,, Key: v,"Quoted": 1, A: "", B: "\\\\", C: "end\\',
    "no colon anywhere, just text, here",
])  # fmt: skip
def test_params_scan_equals_a1111s_regex(line: str) -> None:
    assert infotext.params(line) == A1111_PARAM.findall(line)


def test_params_scan_is_linear_on_a_hostile_line() -> None:
    hostile = "a" * 300_000 + ", " + "b c" * 100_000  # A1111's regex backtracks quadratically here (hours)
    assert infotext.params(hostile) == []
    assert infotext.parse(f"a cat\n{hostile}").prompt.startswith("a cat")


A1111_TEXT = (
    "a photo of a cat <lora:style:0.7>, (masterpiece:1.2)\n"
    "Negative prompt: blurry, lowres\n"
    "Steps: 3, Sampler: DPM++ 2M SDE, Schedule type: Karras, CFG scale: 6.5, Seed: 1234, Size: 32x48, "
    'Model hash: 0123456789, Model: "tiny, v1: x", Clip skip: 2, Lora hashes: "style: 0123456789ab", '
    "Hires upscale: 2, Hires upscaler: Latent, Denoising strength: 0.5, ADetailer model: face_yolov8n.pt, Version: v1.10.1"
)


def test_an_a1111_infotext_gives_the_intended_recipe(tmp_path: Path) -> None:
    asked = []

    def resolver(kind, name, short_hash):
        asked.append((kind, name, short_hash))
        return {"model": "/m/tiny", "lora": str(tmp_path / "style.safetensors")}[kind]

    imported = image_import.recipe_fields(infotext.parse(A1111_TEXT), resolver, "x.png")
    recipe = GenerateRecipe(**imported.fields)
    assert recipe.prompt == "a photo of a cat , (masterpiece:1.2)" and recipe.negative == "blurry, lowres"
    assert (recipe.steps, recipe.cfg, recipe.seed, recipe.width, recipe.height) == (3, 6.5, 1234, 32, 48)
    assert (recipe.scheduler, recipe.schedule_type, recipe.clip_skip, recipe.model) == ("DPM++ 2M SDE", "karras", 2, "/m/tiny")
    assert [(str(lo.path), lo.weight) for lo in recipe.lora] == [(str(tmp_path / "style.safetensors"), 0.7)]
    assert recipe.strength == 0.75  # the Denoising strength belongs to the hires pass
    assert asked == [("model", "tiny, v1: x", "0123456789"), ("lora", "style", "0123456789ab")]
    assert "ADetailer model" in imported.ignored and "Hires fix (Denoising strength, Hires upscale, Hires upscaler)" in imported.ignored
    assert any(i.startswith("RNG GPU") for i in imported.ignored)
    old = infotext.parse("a cat\nSteps: 5, Sampler: DPM++ 2M Karras, CFG scale: 7, Seed: 1, Size: 64x64")
    fields = image_import.recipe_fields(old, resolver, "x").fields
    assert (fields["scheduler"], fields["schedule_type"]) == ("DPM++ 2M", "karras")  # pre-1.9 names


def test_missing_model_and_refused_sampler_are_one_line_errors() -> None:
    with pytest.raises(UserError, match="model 'v1-5-pruned' hash 6ce0161689 was not found"):
        image_import.recipe_fields(infotext.parse("x\nSteps: 5, Seed: 1, Model hash: 6ce0161689, Model: v1-5-pruned"),
                               lambda *a: None, "a.png")
    with pytest.raises(UserError, match="sampler 'Restart' cannot run in sdkit"):
        image_import.recipe_fields(infotext.parse("x\nSteps: 5, Sampler: Restart, Seed: 1"), lambda *a: None, "a.png")


def test_exif_user_comment_as_civitai_serves_it(tmp_path: Path) -> None:
    text = "a cat\nNegative prompt: dog\nSteps: 5, Sampler: Euler a, CFG scale: 7, Seed: 9, Size: 64x64"
    for suffix, body in ((".jpg", text.encode("utf-16-be")), (".webp", text.encode("utf-16-le")), (".jpeg", text.encode())):
        exif = Image.Exif()
        exif.get_ifd(image_import.EXIF_IFD)[image_import.USER_COMMENT] = (b"UNICODE\0" if suffix != ".jpeg" else b"ASCII\0\0\0") + body
        path = tmp_path / f"civitai{suffix}"
        Image.new("RGB", (16, 16), "red").save(path, exif=exif.tobytes())
        assert image_import.image_text(path)["parameters"] == text, suffix


# --- images through the CLI --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def a1111_world(tmp_path_factory, tiny_sd_dir: Path) -> Path:
    """A folder holding an A1111-style PNG, the model under the name its infotext gives, and the LoRA it names."""
    import shutil

    import torch
    from diffusers import StableDiffusionPipeline
    from diffusers.utils import convert_state_dict_to_diffusers
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    root = tmp_path_factory.mktemp("a1111")
    shutil.copytree(tiny_sd_dir, root / "tiny, v1: x")
    pipe = StableDiffusionPipeline.from_pretrained(tiny_sd_dir)
    pipe.unet.add_adapter(LoraConfig(r=4, lora_alpha=4, target_modules=["to_q", "to_k", "to_v", "to_out.0"]))
    with torch.no_grad():
        for name, p in pipe.unet.named_parameters():
            if "lora_" in name:
                p.copy_(torch.randn(p.shape, generator=torch.Generator().manual_seed(1)) * 0.3)
    StableDiffusionPipeline.save_lora_weights(root / "lora", unet_lora_layers=convert_state_dict_to_diffusers(get_peft_model_state_dict(pipe.unet)))
    shutil.move(root / "lora" / "pytorch_lora_weights.safetensors", root / "style.safetensors")
    info = PngInfo()
    info.add_text("parameters", A1111_TEXT)
    Image.new("RGB", (32, 48), "gray").save(root / "a1111.png", pnginfo=info)
    return root


def test_replay_and_from_png_of_an_a1111_image(a1111_world: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(a1111_world)
    replay = invoke("replay", "a1111.png", "-o", "replayed")
    assert replay.exit_code == 0, replay.output
    warnings = [line for line in replay.stderr.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1 and "ADetailer model" in warnings[0] and "Hires fix" in warnings[0] and "RNG GPU" in warnings[0]
    made = json.loads(Image.open("replayed/00001-1234.png").text["sdkit"])["recipe"]
    assert (made["scheduler"], made["schedule_type"], made["clip_skip"], made["cfg"]) == ("DPM++ 2M SDE", "karras", 2, 6.5)
    assert Path(made["model"]).name == "tiny, v1: x" and [(Path(lo["path"]).name, lo["weight"]) for lo in made["lora"]] == [("style.safetensors", 0.7)]
    direct = invoke("generate", "a photo of a cat , (masterpiece:1.2)", "--negative", "blurry, lowres", "-m", "tiny, v1: x",
                    "--steps", "3", "--scheduler", "DPM++ 2M SDE Karras", "--cfg", "6.5", "--seed", "1234", "--width", "32",
                    "--height", "48", "--clip-skip", "2", "--lora", "style.safetensors:0.7", "-o", "direct")
    assert direct.exit_code == 0, direct.output
    assert (pixels(Path("direct/00001-1234.png")) == pixels(Path("replayed/00001-1234.png"))).all()  # the intended recipe
    override = invoke("generate", "--from-png", "a1111.png", "--seed", "7", "--steps", "2", "-o", "from-png")
    assert override.exit_code == 0, override.output
    again = json.loads(Image.open("from-png/00001-7.png").text["sdkit"])["recipe"]
    assert (again["seed"], again["steps"], again["scheduler"], again["clip_skip"]) == (7, 2, "DPM++ 2M SDE", 2)
    info = invoke("info", "a1111.png")
    assert info.exit_code == 0 and "scheduler: DPM++ 2M SDE" in info.stdout and "model: 'tiny, v1: x'" in info.stdout
    assert "# not reproduced by sdkit: ADetailer model" in info.stdout


def test_missing_model_exits_2_and_flags_override_it(a1111_world: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # neither the model nor the LoRA is here
    assert_user_error(invoke("replay", a1111_world / "a1111.png"), "model 'tiny, v1: x' hash 0123456789 was not found")
    given = invoke("generate", "--from-png", a1111_world / "a1111.png", "-m", a1111_world / "tiny, v1: x",
                   "--lora", f"{a1111_world / 'style.safetensors'}:0.5", "--steps", "2", "-o", "out")
    assert given.exit_code == 0, given.output


def comfy_graph(sampler: str = "KSampler", denoise: float = 1.0) -> dict:
    return {
        "4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "tiny.safetensors"}},
        "10": {"class_type": "LoraLoader", "inputs": {"lora_name": "style.safetensors", "strength_model": 0.8,
                                                      "strength_clip": 0.6, "model": ["4", 0], "clip": ["4", 1]}},
        "11": {"class_type": "CLIPSetLastLayer", "inputs": {"stop_at_clip_layer": -2, "clip": ["10", 1]}},
        "6": {"class_type": "CLIPTextEncode", "inputs": {"text": "a (red:1.1) cat", "clip": ["11", 0]}},
        "7": {"class_type": "CLIPTextEncode", "inputs": {"text": "blurry", "clip": ["11", 0]}},
        "5": {"class_type": "EmptyLatentImage", "inputs": {"width": 32, "height": 48, "batch_size": 1}},
        "3": {"class_type": sampler, "inputs": {"seed": 42, "steps": 4, "cfg": 5.5, "sampler_name": "dpmpp_2m_sde_gpu",
                                                "scheduler": "exponential", "denoise": denoise, "model": ["10", 0],
                                                "positive": ["6", 0], "negative": ["7", 0], "latent_image": ["5", 0]}},
        "8": {"class_type": "VAEDecode", "inputs": {"samples": ["3", 0], "vae": ["4", 2]}},
    }


def as_workflow(graph: dict) -> dict:
    """The same graph in ComfyUI's editor format (widget values and a link table)."""
    from sdkit.comfyui import WIDGETS

    nodes, links = [], []
    for node_id, node in graph.items():
        names = WIDGETS.get(node["class_type"], ())
        values = [node["inputs"].get(n, "fixed") for n in names if n in node["inputs"] or n == "control_after_generate"]
        inputs = []
        for name, value in node["inputs"].items():
            if isinstance(value, list):
                links.append([len(links) + 1, int(value[0]), value[1], int(node_id), len(inputs), "*"])
                inputs.append({"name": name, "link": len(links)})
        nodes.append({"id": int(node_id), "type": node["class_type"], "inputs": inputs, "widgets_values": values})
    return {"nodes": nodes, "links": links}


def test_comfyui_plain_graph_from_prompt_or_workflow() -> None:
    from sdkit.comfyui import recipe_fields

    def resolver(kind, name, short_hash):
        return f"/found/{kind}/{name}"

    for prompt, workflow in ((json.dumps(comfy_graph()), None), (None, json.dumps(as_workflow(comfy_graph())))):
        imported = recipe_fields(prompt, workflow, resolver, "c.png")
        recipe = GenerateRecipe(**imported.fields)
        assert (recipe.prompt, recipe.negative, recipe.seed, recipe.steps, recipe.cfg) == ("a (red:1.1) cat", "blurry", 42, 4, 5.5)
        assert (recipe.scheduler, recipe.schedule_type, recipe.clip_skip) == ("DPM++ 2M SDE", "exponential", 2)
        assert (recipe.width, recipe.height, recipe.model) == (32, 48, "/found/model/tiny.safetensors")
        assert [(str(lo.path), lo.weight) for lo in recipe.lora] == [("/found/lora/style.safetensors", 0.8)]
        assert any("CLIP strength 0.6" in i for i in imported.ignored) and any("prompt weights" in i for i in imported.ignored)


def test_comfyui_graphs_that_are_not_plain_exit_2(tmp_path: Path) -> None:
    for name, graph, why in (("adv", comfy_graph("KSamplerAdvanced"), "KSamplerAdvanced"),
                             ("img2img", comfy_graph(denoise=0.6), "denoise 0.6")):
        info = PngInfo()
        info.add_text("prompt", json.dumps(graph))
        Image.new("RGB", (8, 8)).save(tmp_path / f"{name}.png", pnginfo=info)
        assert_user_error(invoke("replay", tmp_path / f"{name}.png", "-o", tmp_path / "o"), "not a plain ComfyUI KSampler graph", why)
    Image.new("RGB", (8, 8)).save(tmp_path / "bare.png")
    assert_user_error(invoke("info", tmp_path / "bare.png"), "has no generation metadata")


def test_controlnet_units_ti_hashes_denoising_and_emphasis_are_written(tmp_path: Path) -> None:
    from safetensors.torch import save_file
    from torch import zeros

    save_file({"<thing>": zeros(32)}, tmp_path / "learned.safetensors")
    net = tmp_path / "my-canny"
    net.mkdir()
    (net / "diffusion_pytorch_model.safetensors").write_bytes(bytes(0x110000))
    recipe = GenerateRecipe(prompt="a (<thing>) cat", seed=3, init_image=tmp_path / "in.png", strength=0.6,
                            embedding=[str(tmp_path / "learned.safetensors")], control=["canny=edges.png@0.8"],
                            prompt_syntax="plain")
    unit = infotext.controlnet_unit(recipe.control[0], str(net))
    text = infotext.parameters(recipe, MODEL, (32, 32), "Karras", [unit])
    a1111 = a1111_parse(text)
    assert a1111["Denoising strength"] == "0.6" and a1111["Emphasis"] == "None"
    assert re.fullmatch(r"<thing>: [0-9a-f]{12}", a1111["TI hashes"])
    # sd-webui-controlnet's parse_unit: "Key: value" pairs split at commas
    fields = dict(item.strip().split(": ") for item in a1111["ControlNet 0"].split(","))
    assert fields == {"Module": "canny", "Model": f"my-canny [{infotext.legacy_hash(net / 'diffusion_pytorch_model.safetensors')}]",
                      "Weight": "0.8", "Resize Mode": "Just Resize", "Guidance Start": "0.0", "Guidance End": "1.0",
                      "Pixel Perfect": "False", "Control Mode": "Balanced"}
    read = image_import.recipe_fields(infotext.parse(text), lambda kind, name, h: f"/{kind}/{name}", "x")
    assert read.fields["prompt_syntax"] == "plain" and read.fields["strength"] == 0.6
    assert read.fields["embedding"] == [{"path": "/embedding/<thing>", "token": "<thing>"}]
    assert "ControlNet 0" in read.ignored  # the control image is not in the infotext


def test_an_sdkit_image_never_gives_its_output_folder_or_pickle_permission(tmp_path: Path) -> None:
    recipe = GenerateRecipe(prompt="a cat", seed=5, out=tmp_path / "elsewhere", allow_pickle=True)
    info = PngInfo()
    info.add_text("sdkit", json.dumps({"sdkit": "0", "task": "generate", "recipe": recipe.model_dump(mode="json")}))
    Image.new("RGB", (8, 8)).save(tmp_path / "made.png", pnginfo=info)
    fields = image_import.import_image(tmp_path / "made.png").fields
    assert fields["prompt"] == "a cat" and "out" not in fields and "allow_pickle" not in fields
