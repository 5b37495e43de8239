"""Regenerate the README's benchmark table from benchmarks/results/*.json (never typed by hand).

    python benchmarks/readme_table.py
"""
from __future__ import annotations

import json
import re
from pathlib import Path

HERE = Path(__file__).resolve().parent
README = HERE.parent / "README.md"
START, END = "<!-- results:start -->", "<!-- results:end -->"


def table() -> str:
    lines = ["| task | variant | metric (split) | ours: mean ± std | per run | references |",
             "|---|---|---|---|---|---|"]
    for path in sorted((HERE / "results").glob("*.json")):
        r = json.loads(path.read_text())
        if "variants" not in r:  # throughput.json and other non-task reports
            continue
        refs = "; ".join(f"{name} {ref['value']}" + (f" ± {ref['std']}" if ref.get("std") is not None else "")
                         for name, ref in r["references"].items())
        for variant, v in r["variants"].items():
            runs = ", ".join(f"{run['test'][r['metric']]:.3f}" for run in r["runs"] if run["variant"] == variant)
            lines.append(f"| `{r['task']}` | {variant} | {r['metric'].upper()} ({r['split']}) | "
                         f"**{v['mean']:.3f} ± {v['std']:.3f}** | {runs} | {refs} |")
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
