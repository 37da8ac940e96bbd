"""sdkit benchmarks: `make bench` (or `python -m bench [NAME ...]`) writes bench/results.md and bench/results.json."""
