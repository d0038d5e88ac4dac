"""Benchmarks with their targets.

`python -m bench <name>...` (or `all`) runs registered benchmarks, merges their figures into
`bench/results.json` (one flat JSON object shared by every benchmark) and regenerates
`bench/RESULTS.md` (figure, value, target, pass/fail, date and machine).

A benchmark is a `Benchmark` (bench/framework.py) in its own module, registered with one line in
bench/registry.py.
"""
