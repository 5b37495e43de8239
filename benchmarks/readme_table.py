"""Regenerate the README's benchmark table from benchmarks/results/*.json and the registry's references (never
typed by hand).

    python benchmarks/readme_table.py
"""
from __future__ import annotations

import json
import re
from pathlib import Path

from zoo.registry import load_registry

HERE = Path(__file__).resolve().parent
README = HERE.parent / "README.md"
START, END = "<!-- results:start -->", "<!-- results:end -->"


def _row(r: dict, label: str, variant: str, summary: dict, refs: str) -> str:
    mine = [run for run in r["runs"] if run["variant"] == variant]
    runs = ", ".join(f"{run['test'][r['metric']]:.3f}{_differs(run, mine)}" for run in mine)
    scored = summary.get("test", {}).get(r["metric"], summary)  # a variant's mean and std are also at its top
    mean, std = scored["mean"], scored["std"]
    return (f"| `{r['task']}` | {label} | {r['metric'].upper()} ({r['split']}) | **{mean:.3f} ± {std:.3f}** | "
            f"{runs} | {_trust(summary.get('calibration'))} | {refs} |")


def _trust(c: dict | None) -> str:
    """A variant's mean test calibration (``zoo.trust``): what its intervals or sets cover, and how sigma ranks errors."""
    if not c:
        return ""
    covered = (f"{c['interval']:.0%} {'interval' if 'mean_width' in c else 'set'} covers {c['coverage']:.2f} "
               + (f"(width {c['mean_width']:.2f}); " if "mean_width" in c else f"(size {c['mean_set_size']:.1f}); ")
               ) if "coverage" in c else ""
    if "spearman_abs_error_sigma" in c:
        return f"{covered}rho(abs error, sigma) {c['spearman_abs_error_sigma']:.2f}; area {c['miscalibration_area']:.3f}"
    return f"{covered}ECE {c['ece']:.3f}" if "ece" in c else ""


def _differs(run: dict, runs: list[dict]) -> str:
    """The overrides this run does not share with the variant's other runs (a merged record can mix budgets)."""
    keys = {k for other in runs for k in other.get("overrides", {})}
    own = {k: run.get("overrides", {}).get(k) for k in sorted(keys)}
    odd = {k: v for k, v in own.items() if any(o.get("overrides", {}).get(k) != v for o in runs)}
    shown = ", ".join(f"{k}={v}" for k, v in odd.items() if v is not None)  # None: the registry's value then
    return f" ({shown})" if shown else ""


def table() -> str:
    registry = load_registry()  # the references as cited now, not as a results file recorded them
    lines = ["| task | model | metric (split) | test: mean ± std | per run | trust (test) | references |",
             "|---|---|---|---|---|---|---|"]
    for path in sorted((HERE / "results").glob("*.json")):
        r = json.loads(path.read_text())
        if "variants" not in r or r.get("quick"):  # throughput.json; --quick runs measure nothing
            continue
        refs = "; ".join(f"{name} {ref.value}" + (f" ± {ref.std}" if ref.std is not None else "")
                         for name, ref in registry.task(r["task"]).references.items())
        for variant, v in r["variants"].items():
            lines.append(_row(r, variant, variant, v, refs))
        for name, b in r.get("baselines", {}).items():  # run beside ours on the same splits
            lines.append(_row(r, f"{name} (baseline)", name, b, refs))
    return "\n".join(lines)


def main() -> None:
    text = README.read_text()
    block = f"{START}\n{table()}\n{END}"
    if START in text:
        text = re.sub(re.escape(START) + ".*?" + re.escape(END), lambda _: block, text, flags=re.S)
    else:
        raise SystemExit(f"{README} has no {START} ... {END} block")
    README.write_text(text)
    print(block)


if __name__ == "__main__":
    main()
