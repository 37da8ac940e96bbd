"""The shared training core on a toy model (no diffusers models): checkpoints, resume, pruning, signals, data, plots."""

from __future__ import annotations

import io
import json
import signal
from pathlib import Path

import pytest
import torch
from PIL import Image

from sdkit.errors import UserError
from sdkit.grids import labelled_grid
from sdkit.schema.train import TrainCommon
from sdkit.training import checkpoints as ckpt
from sdkit.training import data, pictures
from sdkit.training.checkpoints import StopSignals
from sdkit.training.loop import TrainingSpec, accelerator_session, fused_adamw_ok, run_training
from sdkit.training.plots import loss_curve


class Toy:
    """A map-style dataset of 10 fixed (x, y) pairs."""

    def __init__(self) -> None:
        g = torch.Generator().manual_seed(123)
        self.x = torch.randn(10, 4, generator=g)
        self.y = self.x @ torch.tensor([1.0, -2.0, 0.5, 3.0]) + 0.1

    def __len__(self) -> int:
        return 10

    def __getitem__(self, i: int) -> dict:
        return {"index": i, "x": self.x[i], "y": self.y[i]}


def toy_loss(batch, models, generator):
    noise = torch.randn(batch["x"].shape, generator=generator) * 0.1  # per-step randomness from the step's generator
    pred = models["net"](batch["x"] + noise).squeeze(-1)
    return torch.nn.functional.mse_loss(pred, batch["y"])


def train_toy(out: Path, **fields) -> dict[str, torch.Tensor]:
    common = TrainCommon(
        output_dir=out, **{"max_steps": 6, "train_batch_size": 3, "gradient_accumulation_steps": 2, "learning_rate": 0.05,
                           "lr_scheduler": "cosine", "lr_warmup_steps": 1, "use_ema": True, "ema_decay": 0.9,
                           "checkpointing_steps": 2, "checkpoints_total_limit": None, "log_every": 100, **fields}
    )  # fmt: skip
    torch.manual_seed(0)
    net = torch.nn.Linear(4, 1)
    with accelerator_session(common) as accelerator:
        result = run_training(accelerator, common, TrainingSpec(modules={"net": net}, dataset=Toy(), loss_fn=toy_loss))
    return {k: v.clone() for k, v in result.modules["net"].state_dict().items()}


def test_resume_mid_epoch_is_bitwise_exact(tmp_path):
    # 10 items, batch 3 → 4 batches per epoch, 2 micro-batches per step: step 3 is in the middle of epoch 1.
    full = train_toy(tmp_path / "full")
    assert [p.name for _, p in ckpt.complete_checkpoints(tmp_path / "full")] == ["step-2", "step-4", "step-6"]
    resumed = train_toy(tmp_path / "resumed", resume=str(tmp_path / "full/checkpoints/step-4"))
    for key in full:
        assert torch.equal(full[key], resumed[key]), key
    history = json.loads((tmp_path / "resumed/loss.json").read_text())
    assert [row["step"] for row in history] == [1, 2, 3, 4, 5, 6]  # the history travels with the checkpoint
    assert history == json.loads((tmp_path / "full/loss.json").read_text())
    assert (tmp_path / "full/loss.png").is_file() and (tmp_path / "full/loss.csv").read_text().startswith("step,loss,lr")
    run = json.loads((tmp_path / "resumed/run.json").read_text())
    assert run["steps"] == 6 and run["distributed_type"] == "NO" and run["resumed_from"].endswith("step-4")


def test_sigterm_finishes_the_step_saves_and_resume_matches(tmp_path):
    import signal as sig

    from sdkit.training.loop import TrainingInterrupted

    calls = []

    def loss_then_sigterm(batch, models, generator):
        calls.append(1)
        if len(calls) == 5:  # during the 1st micro-batch of step 3: step 3 still completes
            sig.raise_signal(sig.SIGTERM)
        return toy_loss(batch, models, generator)

    handler = sig.getsignal(sig.SIGTERM)
    common = TrainCommon(output_dir=tmp_path / "run", max_steps=6, train_batch_size=3, gradient_accumulation_steps=2,
                         learning_rate=0.05, checkpointing_steps=None, log_every=100)  # fmt: skip
    torch.manual_seed(0)
    with accelerator_session(common) as accelerator, pytest.raises(TrainingInterrupted) as stopped:
        run_training(accelerator, common, TrainingSpec(modules={"net": torch.nn.Linear(4, 1)}, dataset=Toy(), loss_fn=loss_then_sigterm))
    assert stopped.value.exit_code == 143 and "SIGTERM at step 3/6" in str(stopped.value)
    assert stopped.value.checkpoint == tmp_path / "run/checkpoints/step-3" and ckpt.is_complete(stopped.value.checkpoint)
    assert sig.getsignal(sig.SIGTERM) is handler  # no handler left behind
    resumed = train_toy(tmp_path / "run", resume="latest", use_ema=False, lr_scheduler="constant", lr_warmup_steps=0,
                        checkpointing_steps=None)  # fmt: skip
    full = train_toy(tmp_path / "full", use_ema=False, lr_scheduler="constant", lr_warmup_steps=0, checkpointing_steps=None)
    assert all(torch.equal(full[k], resumed[k]) for k in full)


def test_the_loop_steps_with_fused_adamw_where_it_can(tmp_path, monkeypatch):
    made = []

    class Recording(torch.optim.AdamW):
        def __init__(self, params, **kwargs):
            made.append(kwargs.get("fused"))
            super().__init__(params, **kwargs)

    monkeypatch.setattr(torch.optim, "AdamW", Recording)
    train_toy(tmp_path / "run", max_steps=2)
    assert made == [True]
    assert fused_adamw_ok([torch.nn.Parameter(torch.zeros(2))])
    assert not fused_adamw_ok([torch.nn.Parameter(torch.zeros(2)), torch.nn.Parameter(torch.zeros(2, device="meta"))])


def test_fused_adamw_does_the_default_update():
    torch.manual_seed(0)
    nets = [torch.nn.Linear(8, 8) for _ in range(2)]
    nets[1].load_state_dict(nets[0].state_dict())
    optimizers = [torch.optim.AdamW(nets[0].parameters(), lr=1e-2), torch.optim.AdamW(nets[1].parameters(), lr=1e-2, fused=True)]
    for step in range(5):
        x = torch.randn(4, 8, generator=torch.Generator().manual_seed(step))
        for net, optimizer in zip(nets, optimizers, strict=True):
            net(x).square().mean().backward()
            optimizer.step()
            optimizer.zero_grad()
    for a, b in zip(nets[0].parameters(), nets[1].parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_pruning_keeps_newest_complete(tmp_path):
    train_toy(tmp_path, checkpoints_total_limit=2)
    assert [p.name for _, p in ckpt.complete_checkpoints(tmp_path)] == ["step-4", "step-6"]
    assert not [p for p in (tmp_path / "checkpoints").iterdir() if p.name.startswith(".tmp-")]


def test_fresh_start_over_a_run_is_refused_and_latest_continues(tmp_path):
    train_toy(tmp_path, max_steps=2)
    with pytest.raises(UserError, match="already holds a training run"):
        train_toy(tmp_path, max_steps=4)
    weights = train_toy(tmp_path, max_steps=4, resume="latest")  # continues from step 2
    assert json.loads((tmp_path / "run.json").read_text())["resumed_from"].endswith("step-2")
    assert all(torch.isfinite(v).all() for v in weights.values())


def make_checkpoint(root: Path, step: int, complete: bool = True) -> Path:
    path = root / "checkpoints" / f"step-{step}"
    path.mkdir(parents=True)
    if complete:
        (path / ckpt.MARKER).write_text(json.dumps({"complete": True, "step": step, "files": {}}))
    return path


def test_latest_skips_incomplete_and_temp_dirs(tmp_path):
    make_checkpoint(tmp_path, 5)
    make_checkpoint(tmp_path, 10, complete=False)  # crashed before the marker
    (tmp_path / "checkpoints" / ".tmp-step-15").mkdir()  # crashed mid-save
    (tmp_path / "checkpoints" / "step-20").mkdir()
    (tmp_path / "checkpoints" / "step-20" / ckpt.MARKER).write_text("{not json")  # torn marker
    assert ckpt.latest_checkpoint(tmp_path) == tmp_path / "checkpoints" / "step-5"
    assert ckpt.resolve_resume(tmp_path, "latest") == tmp_path / "checkpoints" / "step-5"
    assert ckpt.resolve_resume(tmp_path / "empty", "latest") is None  # nothing yet: fresh start


def test_prune_only_counts_complete_checkpoints(tmp_path):
    for step in (1, 2, 3):
        make_checkpoint(tmp_path, step)
    make_checkpoint(tmp_path, 4, complete=False)
    (tmp_path / "checkpoints" / ".tmp-step-5").mkdir()
    ckpt.prune_checkpoints(tmp_path, 2)
    names = sorted(p.name for p in (tmp_path / "checkpoints").iterdir())
    assert names == ["step-2", "step-3", "step-4"]  # incomplete step-4 untouched, temp removed, oldest pruned


def test_resume_errors(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        ckpt.resolve_resume(tmp_path, str(tmp_path / "checkpoints" / "step-99"))
    bad = make_checkpoint(tmp_path, 7, complete=False)
    with pytest.raises(UserError, match="incomplete"):
        ckpt.resolve_resume(tmp_path, str(bad))
    with pytest.raises(UserError, match="does not exist"):
        train_toy(tmp_path / "run", resume=str(tmp_path / "nope"))
    assert not (tmp_path / "run" / "checkpoints").exists()  # nothing trained, nothing written


def test_checkpoint_state_is_not_pickled_and_must_fit_the_run(tmp_path):
    train_toy(tmp_path / "run", max_steps=2)  # EMA on
    folder = tmp_path / "run/checkpoints/step-2"
    assert not list(folder.glob("custom_checkpoint_*")) and (folder / "sdkit_state.safetensors").is_file()
    with pytest.raises(UserError, match="holds 2 training-state objects but this run has 1"):
        train_toy(tmp_path / "off", max_steps=4, use_ema=False, resume=str(folder))


def test_stop_signals_restore_previous_handlers():
    def mine(signum, frame):
        raise AssertionError("not expected")

    before = signal.signal(signal.SIGTERM, mine)
    int_before = signal.getsignal(signal.SIGINT)
    try:
        with StopSignals() as stop:
            signal.raise_signal(signal.SIGTERM)
            assert stop.received == "SIGTERM"
        with StopSignals() as stop:
            signal.raise_signal(signal.SIGINT)
            assert stop.received == "SIGINT"
            with pytest.raises(KeyboardInterrupt):  # a second Ctrl-C aborts at once
                signal.raise_signal(signal.SIGINT)
        assert signal.getsignal(signal.SIGTERM) is mine and signal.getsignal(signal.SIGINT) is int_before
    finally:
        signal.signal(signal.SIGTERM, before)


def write_folder(root: Path, rows: list[dict] | None, images: dict[str, Image.Image | bytes]) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for name, image in images.items():
        if isinstance(image, bytes):
            (root / name).write_bytes(image)
        else:
            image.save(root / name)
    if rows is not None:
        (root / "metadata.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return root


@pytest.mark.parametrize(
    ("rows", "images", "kwargs", "message"),
    [
        (None, {}, {}, "has no images and no metadata.jsonl"),
        (None, {"a.png": Image.new("RGB", (8, 8))}, {}, "1 images but no metadata.jsonl"),
        ([{"file_name": "a.png", "text": ""}], {"a.png": Image.new("RGB", (8, 8))}, {}, "line 1 .*has no caption"),
        ([{"file_name": "a.png", "caption": "x"}], {"a.png": Image.new("RGB", (8, 8))}, {}, "no 'text' column .*caption-column"),
        ([{"image": "a.png", "text": "x"}], {"a.png": Image.new("RGB", (8, 8))}, {}, "no 'file_name' column"),
        ([{"file_name": "b.png", "text": "x"}], {}, {}, "image .*b.png does not exist"),
        ([], {}, {}, "has no rows"),
    ],
)
def test_dataset_errors(tmp_path, rows, images, kwargs, message):
    with pytest.raises(UserError, match=message):
        data.read_imagefolder(write_folder(tmp_path / "ds", rows, images), **kwargs)


def test_dataset_missing_folder_bad_json_and_corrupt_image(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        data.read_imagefolder(tmp_path / "missing")
    buffer = io.BytesIO()
    Image.effect_noise((32, 32), 64).save(buffer, format="PNG")
    cut = buffer.getvalue()[: len(buffer.getvalue()) // 2]  # the header reads, the pixels do not decode
    folder = write_folder(tmp_path / "ds", None, {"bad.png": cut, "junk.png": b"\x89PNG\r\n\x1a\n garbage"})
    (folder / "metadata.jsonl").write_text('{"file_name": "bad.png", "text": "x"}\n{oops\n')
    with pytest.raises(UserError, match="line 2 is not valid JSON"):
        data.read_imagefolder(folder)
    rows = data.read_imagefolder(folder, max_rows=1)
    with pytest.raises(UserError, match=r"bad\.png cannot be read"):
        pictures.load_pictures([r["file_name"] for r in rows], 8, True)
    (folder / "metadata.jsonl").write_text('{"file_name": "junk.png", "text": "x"}\n')
    with pytest.raises(UserError, match=r"line 1: .*junk\.png is not an image"):  # a broken header: before any model loads
        data.read_imagefolder(folder)


def test_images_tokens_and_augmentation(tmp_path):
    folder = write_folder(
        tmp_path / "ds", [{"file_name": "w.png", "text": "wide"}], {"w.png": Image.new("RGB", (40, 20), (255, 0, 0))}
    )
    rows = data.read_imagefolder(folder)
    files = [r["file_name"] for r in rows]
    cropped, resized = pictures.load_pictures(files, 16, center_crop=True), pictures.load_pictures(files, 16, center_crop=False)
    assert cropped.pixels[0].shape == (3, 16, 16) and resized.pixels[0].shape == (3, 16, 32)
    assert cropped.pixels[0].dtype == torch.uint8
    assert (cropped.targets, cropped.originals, cropped.crops) == ([(16, 16)], [(20, 40)], [(0, 8)])  # micro-conditioning
    assert resized.crops == [pictures.RANDOM_CROP]  # drawn at every step
    generator = torch.Generator().manual_seed(0)
    pixels, corners = pictures.to_pixels(resized.pixels, resized.targets, resized.crops, True, [generator])
    assert pixels.shape == (1, 3, 16, 16) and pixels[0, 0].min() > 0.99 and pixels[0, 1].max() < -0.99
    assert 0 <= corners[0, 1] <= 16 and corners[0, 0] == 0
    entry = cropped.entries()[0]
    batch = data.collate([{"index": 0, "caption": "a", **entry}, {"index": 1, "caption": "b", **entry}])
    assert batch["pixels"].shape == (2, 3, 16, 16) and batch["index"].tolist() == [0, 1]
    assert batch["caption"] == ["a", "b"] and batch["crop"].tolist() == [[0, 8], [0, 8]]


def test_plots(tmp_path):
    grid = labelled_grid([("a red circle on a blue background, a long label that wraps", Image.new("RGB", (64, 64)))] * 3, columns=2, title="step 5")
    assert grid.width >= 2 * 64 and grid.height > 2 * 64
    curve = loss_curve(list(range(1, 101)), [1 / s for s in range(1, 101)])
    assert curve.size == (720, 420)
    assert len(set(curve.getdata())) > 3  # something was drawn
    assert loss_curve([1], [float("nan")]).size == (720, 420)
