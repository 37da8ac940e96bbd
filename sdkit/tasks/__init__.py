"""One module per task; each exposes `run(recipe)` and reads top to bottom like a diffusers pipeline."""
