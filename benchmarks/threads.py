"""Torch threads and OpenMP's wait policy, end to end: which default should a prediction run with?

    python benchmarks/threads.py [--rows 20000] [--rounds 2]

Runs ``zoo predict molecule-solubility`` over a generated table in fresh processes, for each combination of
torch's intra-op threads (``OMP_NUM_THREADS``: 1, and one per core), ``OMP_WAIT_POLICY`` (unset: libgomp spins
a while before sleeping; ``PASSIVE``: sleeps at once) and ``--workers`` (0, and one per core), alone and beside
a second, identical job (the contention a shared machine or a DataLoader worker brings). Every combination runs
in each round, interleaved; the best round of each is kept. Results go to ``benchmarks/results/threads.json``.
Run it alone on the machine: a timing taken beside another job is not a figure.
"""
from __future__ import annotations

import argparse
import itertools
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from throughput import write_table  # noqa: E402


def run_jobs(table: Path, work: Path, threads: int, passive: bool, workers: str, jobs: int) -> float:
    """Rows/s of one job (the slowest of ``jobs`` identical ones started together)."""
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"} | {"OMP_NUM_THREADS": str(threads)}
    if passive:
        env["OMP_WAIT_POLICY"] = "PASSIVE"
    start = time.perf_counter()
    procs = [subprocess.Popen([sys.executable, "-m", "zoo", "predict", "molecule-solubility", "--input", str(table),
                               "--output", str(work / f"out-{j}.csv"), "--workers", workers, "--device", "cpu"],
                              cwd=HERE.parent, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
             for j in range(jobs)]
    for p in procs:
        if p.wait():
            raise SystemExit(p.stderr.read())
    return round(table_rows(table) / (time.perf_counter() - start), 1)


def table_rows(table: Path) -> int:
    return sum(1 for _ in open(table)) - 1


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rows", type=int, default=20_000)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--results", default=str(HERE / "results" / "threads.json"))
    args = p.parse_args()
    cores = len(os.sched_getaffinity(0))
    grid = list(itertools.product(sorted({1, cores}), (False, True), ("0", str(cores)), (1, 2)))
    rates: dict[str, list[float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        table = Path(tmp) / "mols.csv"
        write_table(table, args.rows)
        for _ in range(args.rounds):
            for threads, passive, workers, jobs in grid:
                key = (f"threads={threads} wait={'PASSIVE' if passive else 'default'} workers={workers} "
                       f"{'alone' if jobs == 1 else 'beside another job'}")
                rates.setdefault(key, []).append(run_jobs(table, Path(tmp), threads, passive, workers, jobs))
                print(f"{key}: {rates[key][-1]:,.0f} rows/s", flush=True)
    best = {key: max(r) for key, r in rates.items()}
    report = {"rows": args.rows, "cores": cores, "rounds": args.rounds, "rows_per_s": rates, "best": best}
    Path(args.results).write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.results}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
