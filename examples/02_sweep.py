"""02 — a guidance x seed sweep from a recipe file, with its labelled X/Y grid; the model loads once.

    python examples/02_sweep.py [--out outputs/examples/02] [--steps 20]
"""

import argparse
from pathlib import Path

import sdkit

RECIPE = Path(__file__).parent.parent / "recipes" / "generate" / "shapes-sweep.yaml"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", default="outputs/examples/02")
    parser.add_argument("--steps", type=int, default=20)
    args = parser.parse_args()
    # --set-style overrides: the same precedence as `sdkit run FILE --set ...`
    outputs = sdkit.run(RECIPE, sets=(f"defaults.out={args.out}", f"defaults.steps={args.steps}"))
    print(outputs)
    print(Path(args.out) / "grid-cfg-seed.png")


if __name__ == "__main__":
    main()
