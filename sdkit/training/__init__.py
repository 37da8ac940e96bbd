"""The shared training core: one accelerate loop for every sdkit training task.

* `sdkit.training.loop`        — `make_accelerator`, `TrainingSpec`, `run_training`, `TrainingInterrupted`
* `sdkit.training.checkpoints` — atomic `checkpoints/step-N`, `--resume latest|PATH`, pruning
* `sdkit.training.data`        — imagefolder reading/checking, in-memory images, tokenising, latent caching
* `sdkit.training.plots`       — the loss curve and loss files (Pillow only; grids: `sdkit.grids`)

Import the submodules directly; they import torch, so the CLI imports them only when a training command runs.
"""
