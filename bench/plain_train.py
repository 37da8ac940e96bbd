"""A plain training loop written the way diffusers' examples/text_to_image/train_text_to_image(_lora).py are: the
reference of bench/train_throughput.py. LoRA (`--lora`: peft LoraConfig + unet.add_adapter) or a full UNet fine-tune.

accelerate, components loaded one by one from the model folder, frozen VAE and text encoder, AdamW, DDPMScheduler
noise on random timesteps, MSE on the epsilon target, gradient clipping, constant learning rate. The dataset is an
imagefolder (metadata.jsonl + images) read per item with torchvision transforms, as the examples' `preprocess_train`
does (the `datasets` library is not installed here, so a small torch Dataset reads the same files). Prints one
"step k/N" line per optimiser step on stderr (what the benchmark times) and nothing is saved.

    python bench/plain_train.py MODEL_DIR DATA_DIR --lora --rank 4 --max-steps 30 --batch-size 8
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model")
    parser.add_argument("data")
    parser.add_argument("--lora", action="store_true")
    parser.add_argument("--rank", type=int, default=4)
    parser.add_argument("--max-steps", type=int, default=30)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--resolution", type=int, default=64)
    parser.add_argument("--learning-rate", type=float, default=1e-4)
    parser.add_argument("--gradient-checkpointing", action="store_true")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    import torch
    import torch.nn.functional as F
    from accelerate import Accelerator
    from accelerate.utils import set_seed
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from diffusers.optimization import get_scheduler
    from PIL import Image
    from torchvision import transforms
    from transformers import CLIPTextModel, CLIPTokenizer

    accelerator = Accelerator(gradient_accumulation_steps=1, mixed_precision="no")
    set_seed(args.seed)

    # load scheduler, tokenizer and models
    noise_scheduler = DDPMScheduler.from_pretrained(args.model, subfolder="scheduler")
    tokenizer = CLIPTokenizer.from_pretrained(args.model, subfolder="tokenizer")
    text_encoder = CLIPTextModel.from_pretrained(args.model, subfolder="text_encoder")
    vae = AutoencoderKL.from_pretrained(args.model, subfolder="vae")
    unet = UNet2DConditionModel.from_pretrained(args.model, subfolder="unet")
    vae.requires_grad_(False)
    text_encoder.requires_grad_(False)
    if args.lora:
        from peft import LoraConfig

        unet.requires_grad_(False)
        unet.add_adapter(LoraConfig(r=args.rank, lora_alpha=args.rank, init_lora_weights="gaussian",
                                    target_modules=["to_k", "to_q", "to_v", "to_out.0"]))  # fmt: skip
    if args.gradient_checkpointing:
        unet.enable_gradient_checkpointing()
    unet.train()
    weight_dtype = torch.float32
    vae.to(accelerator.device, dtype=weight_dtype)
    text_encoder.to(accelerator.device, dtype=weight_dtype)
    params = [p for p in unet.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=args.learning_rate, betas=(0.9, 0.999), weight_decay=1e-2, eps=1e-08)

    # dataset: imagefolder rows, preprocessed per item as the example's preprocess_train
    rows = [json.loads(line) for line in (Path(args.data) / "metadata.jsonl").read_text().splitlines() if line.strip()]
    train_transforms = transforms.Compose([
        transforms.Resize(args.resolution, interpolation=transforms.InterpolationMode.BILINEAR),
        transforms.CenterCrop(args.resolution), transforms.ToTensor(), transforms.Normalize([0.5], [0.5]),
    ])  # fmt: skip

    class ImageFolder(torch.utils.data.Dataset):
        def __len__(self):
            return len(rows)

        def __getitem__(self, i):
            image = Image.open(Path(args.data) / rows[i]["file_name"]).convert("RGB")
            ids = tokenizer(rows[i]["text"], max_length=tokenizer.model_max_length, padding="max_length", truncation=True,
                            return_tensors="pt").input_ids[0]  # fmt: skip
            return {"pixel_values": train_transforms(image), "input_ids": ids}

    def collate_fn(examples):
        pixel_values = torch.stack([e["pixel_values"] for e in examples]).to(memory_format=torch.contiguous_format).float()
        return {"pixel_values": pixel_values, "input_ids": torch.stack([e["input_ids"] for e in examples])}

    train_dataloader = torch.utils.data.DataLoader(ImageFolder(), shuffle=True, collate_fn=collate_fn,
                                                   batch_size=args.batch_size, num_workers=0)  # fmt: skip
    lr_scheduler = get_scheduler("constant", optimizer=optimizer, num_warmup_steps=0, num_training_steps=args.max_steps)
    unet, optimizer, train_dataloader, lr_scheduler = accelerator.prepare(unet, optimizer, train_dataloader, lr_scheduler)

    global_step = 0
    while global_step < args.max_steps:
        train_loss = 0.0
        for batch in train_dataloader:
            with accelerator.accumulate(unet):
                latents = vae.encode(batch["pixel_values"].to(dtype=weight_dtype)).latent_dist.sample()
                latents = latents * vae.config.scaling_factor
                noise = torch.randn_like(latents)
                bsz = latents.shape[0]
                timesteps = torch.randint(0, noise_scheduler.config.num_train_timesteps, (bsz,), device=latents.device).long()
                noisy_latents = noise_scheduler.add_noise(latents, noise, timesteps)
                encoder_hidden_states = text_encoder(batch["input_ids"], return_dict=False)[0]
                model_pred = unet(noisy_latents, timesteps, encoder_hidden_states, return_dict=False)[0]
                loss = F.mse_loss(model_pred.float(), noise.float(), reduction="mean")
                avg_loss = accelerator.gather(loss.repeat(args.batch_size)).mean()
                train_loss += avg_loss.item()
                accelerator.backward(loss)
                if accelerator.sync_gradients:
                    accelerator.clip_grad_norm_(params, 1.0)
                optimizer.step()
                lr_scheduler.step()
                optimizer.zero_grad()
            if accelerator.sync_gradients:
                global_step += 1
                print(f"step {global_step}/{args.max_steps} loss {train_loss:.4f}", file=sys.stderr, flush=True)
                train_loss = 0.0
            if global_step >= args.max_steps:
                break
    accelerator.end_training()


if __name__ == "__main__":
    main()
