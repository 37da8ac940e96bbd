"""`python -m sdkit` (also under `accelerate launch -m sdkit`)."""

from sdkit.cli import main

main()
