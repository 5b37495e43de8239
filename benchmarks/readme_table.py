"""Regenerate the README's benchmark table from benchmarks/results/*.json and the registry's references (never
typed by hand).

    python benchmarks/readme_table.py
"""
from __future__ import annotations

import json
import re
from pathlib import Path

from zoo.bench import recipe, summarise
from zoo.registry import load_registry

HERE = Path(__file__).resolve().parent
README = HERE.parent / "README.md"
START, END = "<!-- results:start -->", "<!-- results:end -->"


def _row(r: dict, label: str, runs: list[dict], refs: str) -> str:
    runs = sorted(runs, key=lambda run: run["seed"])
    summary = summarise(runs, (r["metric"],))
    scored = summary["test"][r["metric"]]
    per_run = ", ".join(f"{run['test'][r['metric']]:.3f}" for run in runs)
    kind = "fold" if "folds" in r else "seed"
    seeds = [run["seed"] for run in runs]
    if f"{kind}s" in r and seeds != sorted(r[f"{kind}s"]):  # a part of the record's: say which
        per_run += f" ({kind}{'s' * (len(seeds) > 1)} {', '.join(map(str, seeds))})"
    return (f"| `{r['task']}` | {label} | {r['metric'].upper()} ({r['split']}) | "
            f"**{scored['mean']:.3f} ± {scored['std']:.3f}** | {per_run} | {_trust(summary.get('calibration'))} | {refs} |")


def recipes(runs: list[dict], current: dict) -> dict[str, list[dict]]:
    """A variant's runs grouped by training recipe, so no mean mixes budgets (a merged record can hold runs of
    several), each group labelled by how it differs from ``current``, the registry's recipe now. A run records
    its recipe (``zoo.bench.recipe``); an older one only its overrides of the registry of its day."""
    groups: dict[str, list[dict]] = {}
    for run in runs:
        if "recipe" in run:
            now = {f"train.{k}": v for k, v in current["train"].items()} | {"data.fractions": current["fractions"]}
            then = {f"train.{k}": v for k, v in run["recipe"]["train"].items()} | {
                "data.fractions": run["recipe"]["fractions"]}
            differs = {k: v for k, v in then.items() if now.get(k) != v}
            label = ", ".join(f"{k}={v}" for k, v in sorted(differs.items()))
        else:
            label = ", ".join([*(f"{k}={v}" for k, v in sorted((run.get("overrides") or {}).items())),
                               "recipe not recorded"])
        groups.setdefault(label, []).append(run)
    return groups


def _rows(r: dict, variant: str, label: str, refs: str, registry) -> list[str]:
    current = recipe(registry.task(r["task"], r.get("overrides", {}).get(variant) or {}))
    groups = recipes([run for run in r["runs"] if run["variant"] == variant], current)
    if len(groups) == 1:
        return [_row(r, label, next(iter(groups.values())), refs)]
    return [_row(r, f"{label} ({shown or 'as the registry'})", runs, refs) for shown, runs in groups.items()]


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
        for variant in r["variants"]:
            lines += _rows(r, variant, variant, refs, registry)
        for name in r.get("baselines", {}):  # run beside ours on the same splits
            lines += _rows(r, name, f"{name} (baseline)", refs, registry)
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
