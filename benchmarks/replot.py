"""Redraw benchmark plots from the results JSON, without training anything.

    python benchmarks/replot.py [TASK ...] [--results benchmarks/results]

Learning curves come from each run's per-epoch history and a confusion matrix from each run's counts, both kept in
``<results>/<task>.json``. Parity plots need every test prediction, which the JSON does not keep: they are redrawn
by the next ``zoo bench`` of the task. With no TASK, every results file that has runs is redrawn.
"""
import argparse
import json
from pathlib import Path

from zoo.bench import replot

HERE = Path(__file__).resolve().parent

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("tasks", nargs="*", help="tasks to redraw (default: every results file with runs)")
    parser.add_argument("--results", type=Path, default=HERE / "results", help="folder of the results JSON")
    args = parser.parse_args()
    paths = [args.results / f"{t}.json" for t in args.tasks] or sorted(
        p for p in args.results.glob("*.json") if "runs" in json.loads(p.read_text()))
    for path in paths:
        for png in replot(path):
            print(f"redrew {png}")
