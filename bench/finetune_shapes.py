"""Do the fine-tuning recipes learn? DreamBooth, LoRA and textual inversion on the shapes world, scored by `sdkit eval`.

Each experiment trains through the real CLI (`sdkit train ...` in a child process, whose wall time and peak RSS are
measured with os.wait4), then `sdkit.tasks.eval_shapes.run` scores generated images with the independent scorer.
`sdkit eval shapes` loads a model folder, so adapters are evaluated on a merged copy of the base model (LoRAs fused
at the given weights with diffusers' fuse_lora, or the embedding loaded into the tokenizer and text encoder).

Concepts absent from the base model's training set:
  * DreamBooth: "sks" = the star, from 5 star images in 5 different colours on 5 different backgrounds, prompted "a
    <colour> sks on a <background> background" (the prompt template filled from each image's metadata). "sks" takes the
    shape word's place because the base model's tiny text encoder only ever saw captions of one fixed structure: one
    extra word ("a red sks shape on ...") shifts the colour and background words to positions it never learned (v3
    then scored 13 % colour, 3 % background). Prior preservation: 1,000 renders of the ten-shape world v6 was trained
    on, as regularisation images, each trained with its caption. The full fine-tune also trains the text encoder, uses
    the base model's own loss weighting (min-SNR γ 5), an EMA of its weights and 10 % caption dropout (the
    unconditional branch classifier-free guidance needs drifts otherwise). What decided it (issue #4's notes): on v5,
    which knew four shapes, the star stayed <= 3.5 % in every setting tried; a base that knows ten shapes learns an
    eleventh from five images. 1,000 class images instead of 200 cut the drift from ~27 to ~11 points; the star rate
    grows with steps (on a trial base: 45 % after 3,000 steps, 72 % after 6,000), and so does the drift. On v6 the
    full fine-tune's star rate stayed at 59-66 % in every variant tried that kept the base prompts above 75 % (n = 100,
    against the base's 90.5 %: 10,000 steps 64 % with the base prompts at 78 %; timestep bias later x3 66 % / 78 %; no
    min-SNR 59 % / 79 %; 2,000 class images 64 % / 85 %). A higher learning rate costs the prior (n = 800: 3e-4
    76.9 % / 52 %, 6e-4 60.9 % / 23 %). Its misses are the colour/background pairs no instance image showed, drawn as
    v6's arrows and crescents. DreamBooth LoRA (r 8, text-encoder LoRA too) learns the star faster; n = 200, star /
    base prompts: 2,000 steps 73.5 % / 94 %, 2,500 steps 80 % / 84.5 %, 3,000 steps 86 % / 83.5 % (n = 100: caption
    dropout 0.1 66 % / 84 %, 0.2 55 % / 87 %; prior-loss weight 2 84 % / 85 %). The text-encoder LoRA is what ties
    "sks" to the star: without it (UNet LoRA only, 2,500 steps) the star rate was 15.5 % / 18 % at two eval seeds, and
    the base prompts still lost 7 points; attention-only LoRAs gave 69.5 % / 86 % (2,500 steps) and 62.5 % / 81.5 %
    (3,500). Those one-seed drifts are noisy (see EVAL_SEEDS), so DreamBooth is scored at four eval seeds. Concept rate
    = share of "a <colour> sks on a <background> background" images the scorer reads as stars; world adherence
    before/after (the four base shapes) shows what the prior kept.
  * LoRA: striped fill from striped images captioned "a red striped circle on a blue background", with 20 % caption
    dropout (without it the LoRA also changes the unconditional prediction guidance subtracts; these trials ran on v5
    with LoRA files that loaded their convolution layers only, a key-format bug since fixed: 78 % striped instead of
    83 %; 10 % gave 81.5 %, a cosine schedule or timestep bias 71.5-77 %). Style rate = share of striped-prompt images
    read as striped, at LoRA weight 1 and 0.
  * A second LoRA, the star shape from 300 captioned star images ("a red star on a blue background"; the word "star"
    is in the tokenizer but in no base caption). Concept rate = share of star-prompt images read as stars. Two LoRAs:
    the striped and star LoRAs loaded together, prompted "a red striped star on a blue background" (a pairing neither
    saw), each scored by its own rate. Both LoRAs are UNet-only: with a text-encoder LoRA each, stacking them at 1 / 1
    gave star 49 %, stripes 64 % (and no weight pair tried reached 60 % for both); without, the striped LoRA's weight
    trades one for the other smoothly (see STRIPED_WITH_STAR).
  * Textual inversion: a new token "<zig>" for the triangle (4 vectors, initialised from "shape"), from 20 captioned
    triangles; compared with the base model prompted with the word "triangle" itself (what an embedding can at best
    recover). v5's recipe (1 vector, batch 8, lr 5e-2, 400 steps: 92.5 % on v5) gave 0.5 % on v6, whose "shape" was
    trained to mean any shape (generic_noun): from there the row drifted to rows that also mean "some shape" (loss
    0.162 against the triangle row's 0.146). The shape is decided at high noise (the triangle row's loss advantage
    is largest at t 600-800 and near zero below t 400), so the recipe samples t >= 500 ten times as often
    (timestep_bias later) and takes all 20 images in every step. With one vector that still reached the triangle
    for one seed in three (96 %, else 0-1 %); four vectors reached it for each seed tried (89 %, 93 %, n = 100).

    OMP_NUM_THREADS=1 python bench/finetune_shapes.py --model shapes --out runs/finetune-shapes \
        --results bench/results/finetune_shapes.json
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

SDKIT = [sys.executable, "-m", "sdkit"]
CONCEPT = "a {color} sks on a {background} background"  # "sks" takes the shape word's place: see the docstring
TI_TOKEN = "<zig>"
LORA_TARGETS = ["to_q", "to_k", "to_v", "to_out.0", "conv1", "conv2"]  # attention and the resnets' convolutions

# The two LoRAs' shared recipe (the striped style and the star shape differ only in data and trigger word).
# UNet only: with a text-encoder LoRA each (the previous recipe) each changed how the other's prompt words read, and the
# pair drew stripes or stars, rarely both (star 49 %, stripes 64 % at 1 / 1); alone each scored 1-2 points lower too.
LORA = {"max_steps": 4000, "train_batch_size": 16, "rank": 16, "target_modules": LORA_TARGETS, "train_text_encoder": False,
        "learning_rate": 1e-3, "caption_dropout": 0.2}  # fmt: skip
# Training recipes (YAML fields of the task's schema); --quick divides max_steps by 20.
RECIPES: dict[str, tuple[str, dict[str, Any]]] = {
    "dreambooth_full": ("dreambooth", {
        "instance_prompt": CONCEPT, "with_prior_preservation": True, "class_prompt": "a shape",
        "num_class_images": 1000, "prior_loss_weight": 1.0, "max_steps": 6000, "train_batch_size": 4,
        "train_text_encoder": True, "learning_rate": 1e-4, "snr_gamma": 5.0, "use_ema": True, "ema_decay": 0.998,
        "caption_dropout": 0.1,
    }),
    "dreambooth_lora": ("dreambooth", {
        "instance_prompt": CONCEPT, "with_prior_preservation": True, "class_prompt": "a shape",
        "num_class_images": 1000, "prior_loss_weight": 1.0, "max_steps": 2500, "train_batch_size": 4, "snr_gamma": 5.0,
        "lora": True, "rank": 8, "target_modules": LORA_TARGETS, "train_text_encoder": True, "learning_rate": 1e-3,
        "trigger_word": "sks",
    }),
    "lora_striped": ("lora", {**LORA, "trigger_word": "striped"}),
    "lora_star": ("lora", {**LORA, "trigger_word": "star"}),
    "textual_inversion": ("textual-inversion", {
        "token": TI_TOKEN, "init_token": "shape", "num_vectors": 4, "max_steps": 1000, "train_batch_size": 20,
        "learning_rate": 5e-3, "timestep_bias": "later", "timestep_bias_portion": 0.5, "timestep_bias_multiplier": 10.0,
    }),
}  # fmt: skip
# The striped LoRA's weight beside the star LoRA: the striped LoRA decides how the pair trades stars for stripes, the
# star LoRA's weight barely does. UNet-only LoRAs, n = 200, star / stripes at eval seeds 1234 and 4321: 1 / 1 48 / 90 %
# and 55 / 88.5 %; 0.9 / 1 63 / 74.5 % and 65 / 78 %; 0.85 / 1 68.5 / 68.5 % and 70 / 67.5 %; 0.8 / 1 68 / 50.5 % and
# 69.5 / 52.5 %; 1 / 1.3 47 / 86.5 % and 49.5 / 83.5 %. Seeds 777 and 9999, not used to choose: 63.5 / 64 % and
# 69.5 / 62.5 %.
STRIPED_WITH_STAR = 0.85
# DreamBooth's drift is the difference of two rates near 90 %: at n = 200 (one eval seed) it carries about ±3.5 points
# of noise (seed by seed, the bench's 2,500-step DreamBooth LoRA drifted -6, +3, -4.5 and +2 points), so DreamBooth and
# the stacked LoRAs are scored at four eval seeds (n = 800) and reported pooled, with each seed's score beside it.
EVAL_SEEDS = (1234, 4321, 777, 9999)
COMMON = {"threads": 1, "checkpointing_steps": None, "log_every": 50, "seed": 0, "device": "cpu", "validation_images": 4}
# Each trainer's data set (a make_data key) and validation prompt; DreamBooth's instance and class images are fixed.
INPUTS = {
    "lora_striped": ("striped", "a red striped circle on a blue background"),
    "lora_star": ("stars", "a red star on a blue background"),
    "textual_inversion": ("zig", f"a red {TI_TOKEN} on a blue background"),
}


def make_data(root: Path) -> dict[str, Path]:
    """Star instances (5, no colour or background twice), striped images with captions (300), captioned stars (300),
    triangles captioned with the new token (20), renders of the ten-shape world with their captions (1,000:
    DreamBooth's regularisation images)."""
    from sdkit.data.shapes import write_dataset
    from sdkit.data.world import BASE_SHAPES, MORE_SHAPES

    paths = {"star": root / "star", "striped": root / "striped", "stars": root / "stars", "zig": root / "zig",
             "world": root / "world"}  # fmt: skip
    if not paths["star"].exists():
        pool = write_dataset(root / "star-pool", 200, seed=101, shapes=["star"], split="all")
        rows, chosen = [json.loads(line) for line in (pool / "metadata.jsonl").read_text().splitlines()], []
        for row in rows:
            if all(row["color"] != c["color"] and row["background"] != c["background"] for c in chosen):
                chosen.append(row)
            if len(chosen) == 5:
                break
        (paths["star"] / "images").mkdir(parents=True)
        for row in chosen:
            shutil.copy(pool / row["file_name"], paths["star"] / row["file_name"])
        (paths["star"] / "metadata.jsonl").write_text("".join(json.dumps(row) + "\n" for row in chosen))
    if not paths["world"].exists():
        write_dataset(paths["world"], 1000, seed=202, shapes=[*BASE_SHAPES, *MORE_SHAPES])
    if not paths["striped"].exists():
        write_dataset(paths["striped"], 300, seed=102, pattern="striped")
    if not paths["stars"].exists():
        write_dataset(paths["stars"], 300, seed=104, shapes=["star"], split="all")
    if not paths["zig"].exists():
        write_dataset(paths["zig"], 20, seed=103, shapes=["triangle"], split="all")
        meta = paths["zig"] / "metadata.jsonl"
        rows = [json.loads(line) for line in meta.read_text().splitlines()]
        meta.write_text("".join(json.dumps({**r, "text": r["text"].replace("triangle", TI_TOKEN)}) + "\n" for r in rows))
    return paths


def train(name: str, model: str, data: dict[str, Path], out: Path, quick: bool,
          recipes: dict[str, tuple[str, dict[str, Any]]] | None = None,
          inputs: dict[str, tuple[str, str]] | None = None) -> dict[str, Any]:  # fmt: skip
    """Run `sdkit train <command> --recipe` in a child; its seconds and peak RSS (os.wait4). `recipes` and `inputs`
    default to this module's RECIPES and INPUTS."""
    import yaml

    command, fields = (recipes or RECIPES)[name]
    run_dir = out / name
    recipe = {**COMMON, **fields, "model": model, "output_dir": str(run_dir)}
    if quick:
        recipe["max_steps"] = max(2, recipe["max_steps"] // 20)
        if "num_class_images" in recipe:
            recipe["num_class_images"] = 4
    if command == "dreambooth":
        recipe["instance_data_dir"] = str(data["star"])  # imagefolder: CONCEPT is filled from each image's metadata
        recipe["class_data_dir"] = str(data["world"])
        recipe["validation_prompts"] = [CONCEPT.format(color="red", background="blue"), "a green circle on a white background"]
    else:
        key, prompt = (inputs or INPUTS)[name]
        recipe["data_dir"], recipe["validation_prompts"] = str(data[key]), [prompt]
    finished, recipe_file, text = run_dir / "run.json", out / f"{name}.yaml", yaml.safe_dump(recipe, sort_keys=False)
    if finished.is_file() and recipe_file.is_file() and recipe_file.read_text() == text:
        print(f"[{name}] already trained: {run_dir}", file=sys.stderr)
        return json.loads((out / f"{name}.train.json").read_text())
    if run_dir.exists():  # an unfinished run, or one trained with another recipe
        shutil.rmtree(run_dir)
    out.mkdir(parents=True, exist_ok=True)
    recipe_file.write_text(text)
    log = open(out / f"{name}.log", "w")  # noqa: SIM115 - closed below
    started = time.monotonic()
    proc = subprocess.Popen([*SDKIT, "train", command, "--recipe", str(recipe_file)], stdout=log, stderr=log)
    _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.monotonic() - started
    log.close()
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"[{name}] training failed: see {out / f'{name}.log'}")
    run_info = json.loads(finished.read_text())
    files = [line for line in (out / f"{name}.log").read_text().splitlines() if line.startswith(str(run_dir))]
    result = {
        "command": f"sdkit train {command}", "recipe": str(out / f"{name}.yaml"), "steps": run_info["steps"],
        "wall_seconds": round(seconds, 1), "train_loop_seconds": run_info["seconds"],
        "peak_rss_mb": round(usage.ru_maxrss / 1024, 1), "file_bytes": {Path(f).name: size(Path(f)) for f in files},
    }  # fmt: skip
    (out / f"{name}.train.json").write_text(json.dumps(result, indent=2))
    print(f"[{name}] {result}", file=sys.stderr)
    return result


def size(path: Path) -> int:
    """Bytes of a file, or of every file under a folder."""
    return path.stat().st_size if path.is_file() else sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def merged(model: str, out_dir: Path, loras: list[tuple[Path, float]] = (), embedding: Path | None = None) -> Path:
    """The base pipeline with LoRAs fused at their weights (or an embedding added), saved as a diffusers folder."""
    import torch

    from sdkit.architectures import save_pipeline
    from sdkit.models import load_pipeline, resolve_model

    made_from = json.dumps({"model": model, "loras": [[str(p), p.stat().st_mtime_ns, w] for p, w in loras],
                            "embedding": None if embedding is None else [str(embedding), embedding.stat().st_mtime_ns]})  # fmt: skip
    stamp = out_dir / "made_from.json"  # reuse a merged copy only if it was made from these very files
    if (out_dir / "model_index.json").is_file() and stamp.is_file() and stamp.read_text() == made_from:
        return out_dir
    if out_dir.exists():
        shutil.rmtree(out_dir)
    pipe = load_pipeline(resolve_model(model, hash_local=False), torch_dtype=torch.float32)
    if loras:
        names = [f"l{i}" for i in range(len(loras))]
        for name, (path, _) in zip(names, loras, strict=True):
            pipe.load_lora_weights(str(path), adapter_name=name)
        pipe.set_adapters(names, adapter_weights=[w for _, w in loras])
        pipe.fuse_lora(adapter_names=names)
        pipe.unload_lora_weights()  # the fused weights stay; the LoRA layers go
    if embedding is not None:
        from safetensors.torch import load_file

        state = load_file(str(embedding))
        if "clip_g" in state:  # SDXL: one embedding per text encoder, as diffusers documents loading them
            pipe.load_textual_inversion(state["clip_l"], token=TI_TOKEN, text_encoder=pipe.text_encoder, tokenizer=pipe.tokenizer)
            pipe.load_textual_inversion(state["clip_g"], token=TI_TOKEN, text_encoder=pipe.text_encoder_2, tokenizer=pipe.tokenizer_2)
        else:
            pipe.load_textual_inversion(str(embedding))
    saved = save_pipeline(pipe, out_dir)
    stamp.write_text(made_from)
    return saved


def pooled(per_seed: dict[int, dict[str, Any]]) -> dict[str, Any]:
    """Scores of one model at several eval seeds (as many prompts each) as one: rates averaged, counts summed; the
    per-seed scores stay under "seeds"."""
    scores = list(per_seed.values())
    result: dict[str, Any] = {}
    for key, first in scores[0].items():
        values = [s[key] for s in scores]
        if key == "cfg":
            result[key] = first
        elif key in ("n", "heldout_n"):
            result[key] = sum(values)
        else:
            result[key] = round(sum(values) / len(values), 4)
    return {**result, "seeds": {str(seed): s for seed, s in per_seed.items()}}


def evaluate(model: Path | str, n: int, steps: int, out: Path, **fields: Any) -> dict[str, Any]:
    """`sdkit eval shapes` at cfg 5; report.json and a sample grid go to `out`."""
    from dataclasses import asdict

    from sdkit.schema.eval import EvalShapesRecipe
    from sdkit.tasks.eval_shapes import run

    recipe = EvalShapesRecipe(model=str(model), n=n, steps=steps, cfg=[5.0], batch_size=50, out=out, **fields)
    (score,) = run(recipe)
    return {k: v for k, v in asdict(score).items() if v is not None}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="shapes", help="base model (default: the embedded shapes model)")
    parser.add_argument("--out", type=Path, default=Path("runs/finetune-shapes"), help="work folder (runs, merged models)")
    parser.add_argument("--results", type=Path, default=None, help="write the results JSON here too")
    parser.add_argument("--n", type=int, default=200, help="prompts per evaluation")
    parser.add_argument("--steps", type=int, default=20, help="denoising steps per evaluation image")
    parser.add_argument("--quick", action="store_true", help="smoke run: 1/20 of the training steps, n=10")
    args = parser.parse_args(argv)
    from sdkit.models import resolve_model

    model = resolve_model(args.model, hash_local=False).location
    if not (Path(model) / "model_index.json").is_file():
        raise SystemExit(f"{model} is not a diffusers folder: train or install the shapes model first")
    n = 10 if args.quick else args.n
    out = args.out
    data = make_data(out / "data")
    trained = {name: train(name, model, data, out, args.quick) for name in RECIPES}
    lora = {name: out / name / "pytorch_lora_weights.safetensors" for name in ("dreambooth_lora", "lora_striped", "lora_star")}
    star = {"template": CONCEPT, "expect_shape": "star", "shapes": ["star"], "heldout": False}
    striped = {"pattern": "striped", "heldout": False}
    results: dict[str, Any] = {"model": model, "n": n, "steps": args.steps, "cfg": 5.0, "training": trained, "eval": {}}
    ev = results["eval"]

    score = scorer(ev, out, n, args.steps)

    score("base/world", model, EVAL_SEEDS)
    score("base/sks_star", model, **star)
    score("dreambooth_full/sks_star", out / "dreambooth_full/model", EVAL_SEEDS, **star)
    score("dreambooth_full/world", out / "dreambooth_full/model", EVAL_SEEDS)
    db_lora = merged(model, out / "merged/dreambooth_lora", [(lora["dreambooth_lora"], 1.0)])
    score("dreambooth_lora/sks_star", db_lora, EVAL_SEEDS, **star)
    score("dreambooth_lora/world", db_lora, EVAL_SEEDS)
    score("lora_striped@0/striped", model, **striped)
    score("lora_striped@1/striped", merged(model, out / "merged/striped", [(lora["lora_striped"], 1.0)]), **striped)
    word_star = {"template": "a {color} star on a {background} background", "expect_shape": "star", "shapes": ["star"],
                 "heldout": False}  # fmt: skip
    score("lora_star@0/star", model, **word_star)
    score("lora_star@1/star", merged(model, out / "merged/star", [(lora["lora_star"], 1.0)]), **word_star)
    both = merged(model, out / "merged/striped_star", [(lora["lora_striped"], STRIPED_WITH_STAR), (lora["lora_star"], 1.0)])
    both_fields = {**word_star, "template": "a {color} striped star on a {background} background", "pattern": "striped"}
    score("both_loras/striped_star", both, EVAL_SEEDS, **both_fields)
    zig = {"template": f"a {{color}} {TI_TOKEN} on a {{background}} background", "expect_shape": "triangle",
           "shapes": ["triangle"], "heldout": False}  # fmt: skip
    score("base/zig_triangle", model, **zig)
    score("base/word_triangle", model, **{**zig, "template": "a {color} triangle on a {background} background"})
    ti = merged(model, out / "merged/ti", embedding=out / "textual_inversion/learned_embeds.safetensors")
    score("textual_inversion/zig_triangle", ti, **zig)
    print(write(results, out, args.results, summary))
    return 0


def scorer(ev: dict[str, Any], out: Path, n: int, steps: int):
    """score(key, model folder, seeds=(), **eval fields) → ev[key]: one evaluation at the default eval seed, or with
    `seeds` one per seed, pooled into `n × len(seeds)`."""

    def score(key: str, folder: Path | str, seeds: tuple[int, ...] = (), **fields: Any) -> None:
        where = out / "eval" / key.replace("/", "_").replace("@", "_w")
        if not seeds:
            ev[key] = evaluate(folder, n, steps, where, **fields)
            return
        ev[key] = pooled({seed: evaluate(folder, n, steps, where / f"seed{seed}", seed=seed, **fields) for seed in seeds})

    return score


def write(results: dict[str, Any], out: Path, also: Path | None, summarise) -> str:
    """OUT/results.json (and `also`); the summary text."""
    text = json.dumps(results, indent=2)
    (out / "results.json").write_text(text)
    if also:
        also.parent.mkdir(parents=True, exist_ok=True)
        also.write_text(text)
    return summarise(results)


def summary(results: dict[str, Any]) -> str:
    ev, tr = results["eval"], results["training"]
    pct = lambda v: f"{100 * v:.1f}%"  # noqa: E731
    lines = [
        f"DreamBooth full  sks→star {pct(ev['dreambooth_full/sks_star']['shape'])} (base {pct(ev['base/sks_star']['shape'])}); "
        f"world adherence {pct(ev['dreambooth_full/world']['all'])} vs base {pct(ev['base/world']['all'])}",
        f"DreamBooth LoRA  sks→star {pct(ev['dreambooth_lora/sks_star']['shape'])}; world adherence {pct(ev['dreambooth_lora/world']['all'])}"
        " (by seed: " + ", ".join(f"{pct(ev['dreambooth_lora/world']['seeds'][k]['all'])} vs {pct(b['all'])}"
                                  for k, b in ev["base/world"]["seeds"].items()) + ")",
        f"LoRA striped     weight 1: {pct(ev['lora_striped@1/striped']['pattern'])}, weight 0: {pct(ev['lora_striped@0/striped']['pattern'])}",
        f"LoRA star        weight 1: {pct(ev['lora_star@1/star']['shape'])}, weight 0: {pct(ev['lora_star@0/star']['shape'])}",
        f"Both LoRAs       striped {STRIPED_WITH_STAR} + star 1: star {pct(ev['both_loras/striped_star']['shape'])}, striped "
        f"{pct(ev['both_loras/striped_star']['pattern'])} (by seed: "
        + ", ".join(f"{pct(e['shape'])} / {pct(e['pattern'])}" for e in ev["both_loras/striped_star"]["seeds"].values()) + ")",
        f"Textual inv.     <zig>→triangle {pct(ev['textual_inversion/zig_triangle']['shape'])} (base {pct(ev['base/zig_triangle']['shape'])}; "
        f"base with the word 'triangle' {pct(ev['base/word_triangle']['shape'])})",
    ]
    for name, t in tr.items():
        lines.append(f"train {name:18s} {t['steps']} steps {t['wall_seconds']} s wall, peak RSS {t['peak_rss_mb']} MB, files {t['file_bytes']}")
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
