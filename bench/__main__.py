"""Run the benchmarks (all, or the ones named) and write bench/results.md + bench/results.json."""

from __future__ import annotations

import importlib
import sys

from bench.common import write_results

BENCHES = ("startup", "overhead", "reuse", "cpu_compute", "train_throughput", "gpu", "vae_roundtrip", "shapes_eval",
           "controlnet_fidelity", "a1111_prompts", "sdxl_learning", "sampler_sweep", "server", "openvino")


def main(names: list[str]) -> None:
    figures = []
    for name in names or BENCHES:
        if name not in BENCHES:
            raise SystemExit(f"unknown benchmark {name!r}: choose from {', '.join(BENCHES)}")
        print(f"bench {name} ...", file=sys.stderr, flush=True)
        figures += importlib.import_module(f"bench.{name}").run()
    for f in figures:
        print(f"{f.bench:10s} {f.name:32s} {f.value:8.3f} {f.unit:3s} goal {f.goal:32s} {f.detail}")
    print(write_results(figures))


if __name__ == "__main__":
    main(sys.argv[1:])
