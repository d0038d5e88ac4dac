"""`python -m bench <name>... | all`: run benchmarks, record their figures, regenerate RESULTS.md."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from rich.console import Console

from bench import results
from bench.framework import Benchmark, Context, Reporter, cpu_steal, progress_display
from bench.registry import BENCHMARKS


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("names", nargs="+", metavar="name", help=f"all, or any of: {', '.join(BENCHMARKS)}")
    parser.add_argument(
        "--smoke", action="store_true", help="tiny sizes, to check that a benchmark works; records nothing"
    )
    return parser.parse_args(argv)


def selected(names: Sequence[str]) -> list[Benchmark]:
    if "all" in names:
        return list(BENCHMARKS.values())
    unknown = [name for name in names if name not in BENCHMARKS]
    if unknown:
        raise SystemExit(f"unknown benchmark(s): {', '.join(unknown)}; known: {', '.join(BENCHMARKS)}")
    return [BENCHMARKS[name] for name in dict.fromkeys(names)]


def run_one(benchmark: Benchmark, console: Console, smoke: bool) -> dict[str, float]:
    with progress_display(console) as progress:
        figures = benchmark.run(Context(Reporter(progress), smoke=smoke))
    declared = {figure.key for figure in benchmark.figures}
    undeclared = sorted(set(figures) - declared)
    if undeclared:
        raise RuntimeError(f"{benchmark.name} returned figures it does not declare: {', '.join(undeclared)}")
    return figures


def show(benchmark: Benchmark, figures: dict[str, float], console: Console) -> None:
    for figure in benchmark.figures:
        if figure.key not in figures:
            continue
        value = figures[figure.key]
        verdict = ""
        if figure.target is not None:
            met = figure.target.met_by(value)
            verdict = f"  target {figure.target} {figure.unit}: " + (
                "[green]pass[/green]" if met else "[red]FAIL[/red]"
            )
        console.print(f"  {figure.key:<36} {results.format_number(value):>10} {figure.unit:<4}{verdict}")


def main(argv: Sequence[str]) -> int:
    args = parse_args(argv)
    console = Console()
    if not console.is_terminal:
        console.width = max(console.width, 120)  # logs and CI: room for the progress columns
    failed = []
    for benchmark in selected(args.names):
        console.rule(f"[bold]{benchmark.name}")
        try:
            measure_and_record(benchmark, console, args.smoke)
        except Exception:
            console.print_exception()
            failed.append(benchmark.name)
    if failed:
        console.print(f"[red]failed: {', '.join(failed)}")
    return 1 if failed else 0


def measure_and_record(benchmark: Benchmark, console: Console, smoke: bool) -> None:
    load_before = os.getloadavg()[0]
    if load_before > results.BUSY_LOAD:
        console.print(f"  [yellow]load average {load_before:.2f}: other processes are busy; figures will be noisy")
    with cpu_steal() as stolen:
        figures = run_one(benchmark, console, smoke)
    show(benchmark, figures, console)
    steal_pct = stolen()
    if steal_pct is not None:
        console.print(f"  CPU steal during the run: {steal_pct:g}% (CPU time the host gave its other guests)")
    if smoke:
        console.print("  [yellow]smoke run: nothing recorded[/yellow]")
        return
    results.record(benchmark.name, figures, load_before, BENCHMARKS.values(), steal_pct)
    console.print(f"  recorded in {results.RESULTS_JSON.name} and {results.RESULTS_MD.name}")


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
