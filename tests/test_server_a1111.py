"""A1111's API on a real `sdkit serve` (uvicorn on 127.0.0.1), driven with httpx: every route, the request and response
shapes of A1111's documented examples, infotext in the returned PNGs, LoRAs, ControlNet units, img2img and inpaint,
progress with its preview, interrupt and skip, options, and errors that name the field."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from serverkit import SHAPES_PROMPT, Server, b64png, circle_map, decode, make_library, pixels_of

pytestmark = pytest.mark.slow  # a server process per module
FIXTURES = json.loads((Path(__file__).parent / "fixtures" / "a1111_api.json").read_text())
SMALL = {"width": 64, "height": 64, "steps": 4, "sampler_name": "Euler", "cfg_scale": 5}


@pytest.fixture(scope="module")
def library(tmp_path_factory, tiny_sd_dir: Path, tiny_sdxl_dir: Path) -> Path:
    return make_library(tmp_path_factory.mktemp("library"), tiny_sd_dir, tiny_sdxl_dir)


@pytest.fixture(scope="module")
def server(tmp_path_factory, library: Path):
    with Server(tmp_path_factory.mktemp("a1111") / "out", "--models-dir", library) as running:
        yield running


@pytest.fixture(scope="module")
def client(server):
    with server.client() as c:
        yield c


def txt2img(client, **fields) -> dict:
    response = client.post("/sdapi/v1/txt2img", json={"prompt": SHAPES_PROMPT, **SMALL, **fields})
    assert response.status_code == 200, response.text
    return response.json()


def field_error(response, *loc) -> str:
    assert response.status_code == 422, response.text
    detail = response.json()["detail"]
    assert any(tuple(d["loc"][1:1 + len(loc)]) == loc for d in detail), (loc, detail)
    return detail[0]["msg"]


def test_lists(client, library: Path) -> None:
    models = client.get("/sdapi/v1/sd-models").json()
    assert [m["model_name"] for m in models] == ["shapes", "tiny-sd", "tiny-sdxl"]
    for m in models:
        assert set(FIXTURES["sd_model_keys"]) == set(m)
        assert m["title"] == f"{m['model_name']} [{m['hash']}]" and m["sha256"].startswith(m["hash"])
    samplers = client.get("/sdapi/v1/samplers").json()
    assert {"Euler", "Euler a", "DPM++ 2M", "DDIM"} <= {s["name"] for s in samplers}
    assert all(set(s) == set(FIXTURES["sampler_keys"]) for s in samplers)
    schedulers = client.get("/sdapi/v1/schedulers").json()
    assert [s["label"] for s in schedulers][:4] == ["Automatic", "Uniform", "Karras", "Exponential"]
    assert {"SGM Uniform", "Beta"} <= {s["label"] for s in schedulers} and "Align Your Steps" not in {s["label"] for s in schedulers}
    assert all(set(s) == set(FIXTURES["scheduler_keys"]) for s in schedulers)
    (lora,) = client.get("/sdapi/v1/loras").json()
    assert set(lora) == set(FIXTURES["lora_keys"]) and lora["name"] == "star"
    assert lora["metadata"]["sdkit.trigger_word"] == "star"
    embeddings = client.get("/sdapi/v1/embeddings").json()
    assert set(embeddings) == {"loaded", "skipped"}
    assert set(embeddings["loaded"]["zig"]) == set(FIXTURES["embedding_item_keys"]) and embeddings["loaded"]["zig"]["vectors"] == 2
    (vae,) = client.get("/sdapi/v1/sd-vae").json()
    assert vae["model_name"] == "bright" and vae["filename"].endswith("bright")
    assert "shapes-canny" in client.get("/controlnet/model_list").json()["model_list"]
    assert "canny" in client.get("/controlnet/module_list").json()["module_list"]
    assert client.get("/controlnet/version").json() == {"version": 3}
    for route in ("refresh-checkpoints", "refresh-loras", "refresh-vae", "refresh-embeddings"):
        response = client.post(f"/sdapi/v1/{route}")
        assert response.status_code == 200 and response.json() is None


def test_documented_txt2img_example(client) -> None:
    """The wiki's payload as it stands (A1111's defaults fill in the rest: 512x512, Euler, cfg 7, a random seed)."""
    answer = client.post("/sdapi/v1/txt2img", json=FIXTURES["txt2img_payload"]).json()
    assert list(answer) == FIXTURES["response_keys"]
    assert set(FIXTURES["txt2img_parameter_keys"]) <= set(answer["parameters"])
    assert answer["parameters"]["prompt"] == "maltese puppy" and answer["parameters"]["sampler_index"] == "Euler"
    info = json.loads(answer["info"])
    assert set(FIXTURES["info_keys"]) <= set(info)
    assert (info["width"], info["height"], info["steps"], info["sampler_name"]) == (512, 512, 5, "Euler")
    assert 0 <= info["seed"] < 4294967294 and info["all_seeds"] == [info["seed"]]
    image = decode(answer["images"][0])
    assert image.format == "PNG" and image.size == (512, 512)
    assert image.info["parameters"] == info["infotexts"][0]
    assert f"Seed: {info['seed']}" in image.info["parameters"] and "Steps: 5" in image.info["parameters"]


def test_documented_override_and_options_examples_name_what_sdkit_lacks(client) -> None:
    response = client.post("/sdapi/v1/txt2img", json=FIXTURES["override_payload"])
    field_error(response, "override_settings", "filter_nsfw")
    response = client.post("/sdapi/v1/options", json=FIXTURES["options_payload"])
    assert "not in the library" in field_error(response, "sd_model_checkpoint")


def test_seeds_batches_and_infotext(client) -> None:
    answer = txt2img(client, seed=7, batch_size=2, n_iter=2)
    info = json.loads(answer["info"])
    assert info["all_seeds"] == [7, 8, 9, 10] and len(answer["images"]) == 4
    for b64, seed, text in zip(answer["images"], info["all_seeds"], info["infotexts"], strict=True):
        image = decode(b64)
        assert image.info["parameters"] == text and f"Seed: {seed}," in text and "Sampler: Euler" in text
        assert json.loads(image.info["sdkit"])["recipe"]["seed"] == seed
    again = txt2img(client, seed=9)
    assert np.array_equal(pixels_of(again["images"][0]), pixels_of(answer["images"][2]))
    png = client.post("/sdapi/v1/png-info", json={"image": FIXTURES["png_info_prefix"] + answer["images"][1]}).json()
    assert set(png) == set(FIXTURES["png_info_keys"])
    assert png["info"] == info["infotexts"][1]
    assert (png["parameters"]["Seed"], png["parameters"]["Size-1"], png["parameters"]["Steps"]) == ("8", "64", "4")
    assert "sdkit" in png["items"] and "parameters" not in png["items"]
    field_error(client.post("/sdapi/v1/png-info", json={"image": "not an image"}), "image")


def test_lora_tag_and_embedding_names(client) -> None:
    plain = pixels_of(txt2img(client, seed=3)["images"][0])
    tagged = txt2img(client, seed=3, prompt=f"{SHAPES_PROMPT} <lora:star:1>")
    assert np.abs(pixels_of(tagged["images"][0]) - plain).max() > 10
    assert not np.array_equal(pixels_of(txt2img(client, seed=3, prompt=f"{SHAPES_PROMPT} <lora:star:0.3>")["images"][0]),
                              pixels_of(tagged["images"][0]))  # fmt: skip
    off = txt2img(client, seed=3, prompt=f"{SHAPES_PROMPT} <lora:star:1>", disable_extra_networks=True)
    assert np.array_equal(pixels_of(off["images"][0]), plain)
    field_error(client.post("/sdapi/v1/txt2img", json={"prompt": "x <lora:nope:1>", **SMALL}), "prompt")
    with_embedding = txt2img(client, seed=3, prompt="a zig on a blue background")
    assert len(with_embedding["images"]) == 1


def test_controlnet_unit(client) -> None:
    plain = pixels_of(txt2img(client, seed=5)["images"][0])
    unit = {**FIXTURES["controlnet_unit"], "image": b64png(circle_map(64))}
    answer = txt2img(client, seed=5, alwayson_scripts={"controlnet": {"args": [unit]}})
    image, detected = answer["images"]  # the image, then the unit's control map, as the extension returns them
    assert np.abs(pixels_of(image) - plain).max() > 10
    assert np.array_equal(pixels_of(detected), np.asarray(circle_map(64)).astype(int))
    kept_off = txt2img(client, seed=5, alwayson_scripts={"controlnet": {"args": [{**unit, "enabled": False}]}})
    assert len(kept_off["images"]) == 1 and np.array_equal(pixels_of(kept_off["images"][0]), plain)
    no_map = txt2img(client, seed=5, alwayson_scripts={"controlnet": {"args": [{**unit, "save_detected_map": False}]}})
    assert np.array_equal(pixels_of(no_map["images"][0]), pixels_of(image)) and len(no_map["images"]) == 1
    bad = {"controlnet": {"args": [{**unit, "module": "ip-adapter_clip"}]}}
    field_error(client.post("/sdapi/v1/txt2img", json={"prompt": "x", **SMALL, "alwayson_scripts": bad}),
                "alwayson_scripts", "controlnet", "args", 0, "module")  # fmt: skip
    wide = {"controlnet": {"args": [{**unit, "image": b64png(circle_map(64).resize((128, 64)))}]}}
    field_error(client.post("/sdapi/v1/txt2img", json={"prompt": "x", **SMALL, "alwayson_scripts": wide}),
                "alwayson_scripts", "controlnet", "args", 0, "resize_mode")  # fmt: skip
    stretched = {"controlnet": {"args": [{**unit, "image": wide["controlnet"]["args"][0]["image"], "resize_mode": "Just Resize"}]}}
    assert len(txt2img(client, seed=5, alwayson_scripts=stretched)["images"]) == 2


def test_img2img_and_inpaint(client) -> None:
    source = decode(txt2img(client, seed=11)["images"][0]).convert("RGB")
    body = {"prompt": SHAPES_PROMPT, **SMALL, "init_images": [b64png(source)], "denoising_strength": 0.5, "seed": 2}
    answer = client.post("/sdapi/v1/img2img", json=body).json()
    assert decode(answer["images"][0]).size == (64, 64)
    assert "Denoising strength: 0.5" in json.loads(answer["info"])["infotexts"][0]
    assert answer["parameters"]["init_images"] is None  # as A1111 answers without include_init_images
    assert set(FIXTURES["img2img_parameter_keys"]) <= set(answer["parameters"])
    mask = np.zeros((64, 64), np.uint8)
    mask[:, 32:] = 255
    from PIL import Image

    inpaint = {**body, "prompt": "a yellow square on a green background", "mask": b64png(Image.fromarray(mask)),
               "denoising_strength": 1.0, "inpainting_fill": 1, "inpaint_full_res": False, "mask_blur": 0}  # fmt: skip
    painted = pixels_of(client.post("/sdapi/v1/img2img", json=inpaint).json()["images"][0])
    change = np.abs(painted - np.asarray(source).astype(int)).mean(axis=(0, 2))
    assert change[:24].mean() < change[40:].mean() / 2, change  # the masked (right) half is what changed
    defaults = {**body, "mask": inpaint["mask"]}  # A1111's defaults: fill 0 (fill) and only-masked: not sdkit's
    field_error(client.post("/sdapi/v1/img2img", json=defaults), "inpaint_full_res")
    field_error(client.post("/sdapi/v1/img2img", json={**defaults, "inpaint_full_res": False}), "inpainting_fill")
    field_error(client.post("/sdapi/v1/img2img", json={"prompt": "x", **SMALL}), "init_images")


def run_in_background(client, body: dict) -> tuple[threading.Thread, dict]:
    answer: dict = {}

    def go():
        response = client.post("/sdapi/v1/txt2img", json=body)
        answer.update(status=response.status_code, body=response.json())

    thread = threading.Thread(target=go)
    thread.start()
    return thread, answer


def progress_once(client, until, timeout: float = 120) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        progress = client.get("/sdapi/v1/progress").json()
        if until(progress):
            return progress
        time.sleep(0.05)
    raise AssertionError(f"progress never reached the condition: {progress}")


def test_progress_preview_and_interrupt(server, client) -> None:
    thread, answer = run_in_background(server.client(), {"prompt": SHAPES_PROMPT, **SMALL, "steps": 400, "n_iter": 3, "seed": 1})
    seen = progress_once(client, lambda p: p["state"]["sampling_step"] > 2 and p["current_image"])
    assert set(FIXTURES["progress_keys"]) <= set(seen) and set(FIXTURES["state_keys"]) <= set(seen["state"])
    assert seen["state"]["sampling_steps"] == 400 and seen["state"]["job_count"] == 3 and 0.01 < seen["progress"] < 0.5
    assert seen["eta_relative"] > 0 and decode(seen["current_image"]).format == "PNG"
    assert client.post("/sdapi/v1/interrupt").json() == {}
    thread.join(timeout=120)
    assert answer["status"] == 200 and answer["body"]["images"] == []  # stopped in image 1 of 3: nothing finished
    idle = progress_once(client, lambda p: p["progress"] == 0)
    assert idle["state"]["job_count"] == 0 and idle["current_image"] is None


def test_skip_moves_to_the_next_image(server, client) -> None:
    thread, answer = run_in_background(server.client(), {"prompt": SHAPES_PROMPT, **SMALL, "steps": 150, "n_iter": 3, "seed": 20})
    progress_once(client, lambda p: p["state"]["job_no"] == 0 and p["state"]["sampling_step"] > 2)
    assert client.post("/sdapi/v1/skip").status_code == 200
    thread.join(timeout=300)
    infotexts = json.loads(answer["body"]["info"])["infotexts"]
    assert [t.split("Seed: ")[1].split(",")[0] for t in infotexts] == ["21", "22"]


def test_schedule_type_clip_skip_and_vae_reach_the_recipe(client, library: Path) -> None:
    """A1111's scheduler field, CLIP_stop_at_last_layers and sd_vae (as override_settings and as options) are the
    recipe's schedule_type, clip_skip and vae, written into the infotext as A1111 writes them."""
    def run(**fields):
        answer = txt2img(client, seed=5, sampler_name="DPM++ 2M", **fields)
        image = decode(answer["images"][0])
        return pixels_of(answer["images"][0]), json.loads(image.info["sdkit"])["recipe"], image.info["parameters"], json.loads(answer["info"])

    plain, recipe, text, _ = run()
    assert recipe["schedule_type"] == "Automatic" and "Schedule type: SGM Uniform" in text  # the shapes model's own (trailing)
    exponential, recipe, text, _ = run(scheduler="Exponential")
    assert recipe["schedule_type"] == "Exponential" and "Schedule type: Exponential" in text
    assert np.abs(exponential - plain).max() > 0
    skipped, recipe, text, info = run(override_settings={"CLIP_stop_at_last_layers": 2})
    assert recipe["clip_skip"] == 2 and "Clip skip: 2" in text and info["clip_skip"] == 2
    assert np.abs(skipped - plain).max() > 0
    bright, recipe, text, info = run(override_settings={"sd_vae": "bright"})
    assert recipe["vae"] == str((library / "vae" / "bright").resolve()) and "VAE: bright" in text
    assert info["sd_vae_name"] == "bright" and (bright.mean() > plain.mean() + 5)
    try:
        assert client.post("/sdapi/v1/options", json={"sd_vae": "bright", "CLIP_stop_at_last_layers": 2}).status_code == 200
        assert client.get("/sdapi/v1/options").json()["sd_vae"] == "bright"
        by_option, recipe, _, _ = run()
        assert recipe["vae"].endswith("bright") and recipe["clip_skip"] == 2
        assert not np.array_equal(by_option, bright)  # clip skip 2 as well
    finally:
        client.post("/sdapi/v1/options", json={"sd_vae": "Automatic", "CLIP_stop_at_last_layers": 1})


def test_sdxl_refiner(client) -> None:
    """refiner_checkpoint + refiner_switch_at on an SDXL model: the recipe's refiner, recorded as A1111 records it."""
    sdxl = {"override_settings": {"sd_model_checkpoint": "tiny-sdxl"}, "width": 32, "height": 32, "prompt": "a cat"}
    refined = txt2img(client, seed=6, refiner_checkpoint="tiny-sdxl", refiner_switch_at=0.5, **sdxl)
    image = decode(refined["images"][0])
    recipe = json.loads(image.info["sdkit"])["recipe"]
    assert recipe["refiner"].endswith("tiny-sdxl") and recipe["refiner_switch"] == 0.5
    assert "Refiner: tiny-sdxl [" in image.info["parameters"] and "Refiner switch at: 0.5" in image.info["parameters"]
    field_error(client.post("/sdapi/v1/txt2img", json={**SMALL, **sdxl, "refiner_checkpoint": "tiny-sdxl",
                                                      "refiner_switch_at": 1.5}), "refiner_switch_at")  # fmt: skip


def test_options_switch_the_model(client) -> None:
    options = client.get("/sdapi/v1/options").json()
    assert options["sd_model_checkpoint"].startswith("shapes [") and options["samples_format"] == "png"
    tiny = next(m for m in client.get("/sdapi/v1/sd-models").json() if m["model_name"] == "tiny-sd")
    assert client.post("/sdapi/v1/options", json={"sd_model_checkpoint": tiny["title"]}).status_code == 200
    try:
        assert client.get("/sdapi/v1/options").json()["sd_model_checkpoint"] == tiny["title"]
        info = json.loads(txt2img(client, width=32, height=32, prompt="a cat")["info"])
        assert info["sd_model_name"] == "tiny-sd" and info["sd_model_hash"] == tiny["hash"]
        by_override = json.loads(txt2img(client, override_settings={"sd_model_checkpoint": "shapes"})["info"])
        assert by_override["sd_model_name"] == "shapes"
        assert client.get("/sdapi/v1/options").json()["sd_model_checkpoint"] == tiny["title"]  # restored afterwards
        txt2img(client, override_settings={"sd_model_checkpoint": "shapes"}, override_settings_restore_afterwards=False)
        assert client.get("/sdapi/v1/options").json()["sd_model_checkpoint"].startswith("shapes [")  # kept, as A1111 does
    finally:
        client.post("/sdapi/v1/options", json={"sd_model_checkpoint": "shapes"})
    assert client.get("/sdapi/v1/options").json()["sd_model_checkpoint"].startswith("shapes [")
    field_error(client.post("/sdapi/v1/options", json={"no_such_option": 1}), "no_such_option")
    field_error(client.post("/sdapi/v1/options", json={"CLIP_stop_at_last_layers": 13}), "CLIP_stop_at_last_layers")
    field_error(client.post("/sdapi/v1/options", json={"sd_vae": "nope.safetensors"}), "sd_vae")


@pytest.mark.parametrize("fields, loc", [
    ({"enable_hr": True}, ("enable_hr",)), ({"restore_faces": True}, ("restore_faces",)), ({"tiling": True}, ("tiling",)),
    ({"styles": ["cinematic"]}, ("styles",)), ({"subseed_strength": 0.5}, ("subseed_strength",)),
    ({"script_name": "X/Y/Z plot"}, ("script_name",)), ({"alwayson_scripts": {"ADetailer": {"args": []}}}, ("alwayson_scripts", "ADetailer")),
    ({"refiner_checkpoint": "sdxl-refiner"}, ("refiner_checkpoint",)), ({"s_churn": 1.0}, ("s_churn",)),
    ({"refiner_checkpoint": "tiny-sdxl"}, ("refiner_checkpoint",)),  # the shapes model is no SDXL model
    ({"override_settings": {"CLIP_stop_at_last_layers": 0}}, ("override_settings", "CLIP_stop_at_last_layers")),
    ({"override_settings": {"sd_vae": "nope"}}, ("override_settings", "sd_vae")), ({"prompt": "x <lora:/etc/x:1>"}, ("prompt",)),
    ({"sampler_name": "DPM adaptive"}, ("sampler_name",)), ({"scheduler": "Align Your Steps"}, ("scheduler",)),
    ({"scheduler": "Karras", "sampler_name": "Euler a"}, ("scheduler",)), ({"scheduler": "bogus"}, ("scheduler",)),
    ({"sampler_name": "Euler a", "eta": 0.5}, ("eta",)), ({"width": 100}, ("width",)), ({"steps": "many"}, ("steps",)),
    ({"batch_size": 50, "n_iter": 50}, ("batch_size",)), ({"seed": "x"}, ("seed",)),
])  # fmt: skip
def test_what_sdkit_cannot_honour_is_a_422_naming_the_field(client, fields: dict, loc: tuple) -> None:
    field_error(client.post("/sdapi/v1/txt2img", json={"prompt": "x", **SMALL, **fields}), *loc)


def test_off_values_and_unknown_keys_are_accepted(client) -> None:
    """What A1111 clients send for switched-off features, plus keys A1111 itself ignores."""
    off = {"enable_hr": False, "restore_faces": False, "tiling": False, "styles": [], "subseed": 99, "subseed_strength": 0,
           "s_churn": 0, "s_noise": 1, "eta": None, "hr_scale": 2, "hr_upscaler": "Latent", "denoising_strength": 0.7,
           "script_args": [], "alwayson_scripts": {}, "override_settings": {"CLIP_stop_at_last_layers": 1},
           "send_images": True, "save_images": False, "not_an_a1111_field": {"x": 1}, "sampler_name": "Euler a", "eta_ddim": 3}  # fmt: skip
    assert len(txt2img(client, seed=4, **off)["images"]) == 1


def test_bad_json_is_422(client) -> None:
    response = client.post("/sdapi/v1/txt2img", content=b'{"prompt": "x", "steps": ', headers={"Content-Type": "application/json"})
    assert response.status_code == 422 and response.json()["detail"][0]["type"] == "json_invalid"
    field_error(client.post("/sdapi/v1/txt2img", json={"prompt": "x", "cfg_scale": [1]}), "cfg_scale")


def test_save_images_writes_into_the_gallery(server, client) -> None:
    before = client.get("/sdkit/v1/gallery").json()["total"]
    txt2img(client, seed=31)
    assert client.get("/sdkit/v1/gallery").json()["total"] == before
    answer = txt2img(client, seed=31, save_images=True, send_images=False)
    assert answer["images"] == []
    gallery = client.get("/sdkit/v1/gallery").json()
    assert gallery["total"] == before + 1 and gallery["items"][0]["name"] == "txt2img-images/00001-31.png"
    assert list((server.out / ".sdkit-server" / "unsaved").glob("*.png")) == []


def test_a1111_client_example_runs_unchanged(server, tmp_path: Path) -> None:
    """examples/a1111_client.py: txt2img with a LoRA and a ControlNet unit, progress, png-info and options, written
    against A1111's documented API only."""
    import subprocess
    import sys

    script = Path(__file__).parent.parent / "examples" / "a1111_client.py"
    done = subprocess.run([sys.executable, str(script), "--url", server.url, "--out", str(tmp_path), "--steps", "30"],
                          capture_output=True, text=True, timeout=600)  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    assert "LoRA star, ControlNet shapes-canny" in done.stdout and done.stdout.rstrip().endswith("ok")
    assert "txt2img: 2 image(s), seed 42" in done.stdout  # the image and the unit's control map
    assert decode_file(tmp_path / "txt2img-42.png").info["parameters"].startswith(SHAPES_PROMPT)


def decode_file(path: Path):
    from PIL import Image

    return Image.open(path)
