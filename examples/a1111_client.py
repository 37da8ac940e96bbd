"""A client of AUTOMATIC1111's HTTP API that uses nothing but A1111's documented routes and fields (and the
sd-webui-controlnet extension's), run unchanged against `sdkit serve`.

    sdkit serve --models-dir MODELS &        # MODELS/loras/ holds a LoRA for the shapes model
    python examples/a1111_client.py --url http://127.0.0.1:7860 --out outputs/a1111-client

It picks a model, a LoRA and a ControlNet from the server's lists, generates with txt2img (the LoRA as a
`<lora:name:weight>` tag, one ControlNet unit with a canny map it draws itself) while polling /progress, reads the
returned PNG's infotext back with /png-info, and reads and sets /options. Only the standard library and Pillow.
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import threading
import time
import urllib.request
from pathlib import Path

from PIL import Image, ImageDraw


class A1111:
    def __init__(self, url: str, auth: str | None = None):
        self.url = url.rstrip("/")
        self.headers = {"Content-Type": "application/json"}
        if auth:
            self.headers["Authorization"] = "Basic " + base64.b64encode(auth.encode()).decode()

    def call(self, method: str, path: str, body: dict | None = None):
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(self.url + path, data=data, method=method, headers=self.headers)
        with urllib.request.urlopen(request, timeout=600) as response:
            text = response.read().decode()
        return json.loads(text) if text else None


def edge_map(size: int) -> str:
    """A white circle outline on black: a ready-made canny map, as base64 PNG."""
    image = Image.new("RGB", (size, size), "black")
    ImageDraw.Draw(image).ellipse((size // 4, size // 4, 3 * size // 4, 3 * size // 4), outline="white", width=2)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--url", default="http://127.0.0.1:7860")
    parser.add_argument("--auth", default=None, help="USER:PASSWORD when the server runs with --api-auth")
    parser.add_argument("--out", default="outputs/a1111-client")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--size", type=int, default=64)
    args = parser.parse_args()
    api = A1111(args.url, args.auth)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    # 1. what the server has
    model = api.call("GET", "/sdapi/v1/sd-models")[0]
    lora = api.call("GET", "/sdapi/v1/loras")[0]
    controlnet = api.call("GET", "/controlnet/model_list")["model_list"][0]
    sampler = api.call("GET", "/sdapi/v1/samplers")[0]["name"]
    print(f"model {model['title']}, LoRA {lora['name']}, ControlNet {controlnet}, sampler {sampler}")

    # 2. txt2img with a LoRA and a ControlNet unit, polling /progress while it runs
    payload = {
        "prompt": f"a red circle on a blue background <lora:{lora['name']}:0.8>",
        "negative_prompt": "",
        "steps": args.steps, "cfg_scale": 5, "width": args.size, "height": args.size, "seed": 42,
        "sampler_name": sampler, "batch_size": 1, "n_iter": 1,
        "override_settings": {"sd_model_checkpoint": model["title"]},
        "alwayson_scripts": {"controlnet": {"args": [{
            "enabled": True, "module": "none", "model": controlnet, "weight": 1.0, "image": edge_map(args.size),
            "resize_mode": "Crop and Resize", "guidance_start": 0.0, "guidance_end": 1.0, "control_mode": "Balanced",
            "pixel_perfect": False,
        }]}},
    }  # fmt: skip
    answer: dict = {}
    request = threading.Thread(target=lambda: answer.update(api.call("POST", "/sdapi/v1/txt2img", payload)))
    request.start()
    seen = 0.0
    while request.is_alive():
        progress = api.call("GET", "/sdapi/v1/progress")
        seen = max(seen, progress["progress"])
        time.sleep(0.05)
    request.join()
    info = json.loads(answer["info"])
    print(f"txt2img: {len(answer['images'])} image(s), seed {info['seed']}, highest progress seen {seen:.2f}")
    image_b64 = answer["images"][0]
    path = out / f"txt2img-{info['seed']}.png"
    path.write_bytes(base64.b64decode(image_b64))
    print(f"saved {path} ({Image.open(path).size[0]}x{Image.open(path).size[1]})")

    # 3. the image's settings, read back
    png = api.call("POST", "/sdapi/v1/png-info", {"image": image_b64})
    print(f"png-info: Seed {png['parameters']['Seed']}, Steps {png['parameters']['Steps']}")
    assert png["parameters"]["Seed"] == str(info["seed"]), png["parameters"]

    # 4. options: read, and set the checkpoint
    options = api.call("GET", "/sdapi/v1/options")
    api.call("POST", "/sdapi/v1/options", {"sd_model_checkpoint": model["title"]})
    print(f"options: sd_model_checkpoint {options['sd_model_checkpoint']}")
    print("ok")


if __name__ == "__main__":
    main()
