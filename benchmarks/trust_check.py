"""Does the applicability-domain flag separate what a model knows from what it does not?

    ZOO_DATA=../shared/data python benchmarks/trust_check.py [--solubility FOLDER] [--materials FOLDER]

For ``molecule-solubility``: the share of its own test rows (the split its config records) predicted
``in_domain``, against the share of ``examples/unusual_molecules.csv`` (organometallics, metal complexes, a
40-residue peptide, a PEG 40-mer: nothing like ESOL's small organics). For ``materials-property``: NaCl and Si
(not perovskites), SrTiO3 with Sr replaced by an element the training set lacks (Ce, U), and the share of its
test rows in domain. Models default to the bundled ones; results go to ``benchmarks/results/trust-check.json``.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

import zoo  # noqa: E402
from zoo.artifacts import BUNDLED, sha256_file  # noqa: E402
from zoo.data import data_file  # noqa: E402
from zoo.tables import read_dataset, read_rows  # noqa: E402
from zoo.train import prepare, run_split, saved_task  # noqa: E402

EXAMPLES = HERE.parent / "examples"


def test_rows(model) -> list[dict]:
    """The rows of the test set of the split a saved model was trained on (drawn again from its recorded seed)."""
    task = saved_task(model)
    path = data_file(task, task.data.file)
    rows = read_dataset(path, task.data.reader)
    model.spec = task
    data = prepare(model, rows, progress=False, data_sha256=sha256_file(path))  # cached features when there
    _, _, test = run_split(task, data, bool(task.data.test_file))
    return [rows[i] for i in data.rows[test]]


def share_in_domain(results: list[dict]) -> float:
    flags = [r["in_domain"] for r in results if "in_domain" in r]
    return float(np.mean(flags)) if flags else float("nan")


def solubility(folder: str) -> dict:
    model = zoo.load(folder)
    test = model.predict(test_rows(zoo.load(folder)))
    unusual = read_rows(EXAMPLES / "unusual_molecules.csv")
    flagged = model.predict(unusual)
    return {"model": folder, "test_in_domain": share_in_domain(test), "n_test": len(test),
            "unusual_in_domain": share_in_domain(flagged), "n_unusual": len(unusual),
            "unusual": {row["name"]: {k: r.get(k) for k in ("domain_score", "in_domain", "unseen_elements", "error")}
                        for row, r in zip(unusual, flagged)}}


def materials(folder: str) -> dict:
    from pymatgen.core import Structure

    model = zoo.load(folder)
    srtio3 = Structure.from_file(EXAMPLES / "crystals" / "SrTiO3.cif")
    probes = {"NaCl (rock salt)": str(EXAMPLES / "crystals" / "NaCl.cif"),
              "Si (diamond)": str(EXAMPLES / "crystals" / "Si.cif"),
              "SrTiO3 (a training-like perovskite)": str(EXAMPLES / "crystals" / "SrTiO3.cif")}
    for element in ("Ce", "U"):  # absent from matbench_perovskites' 56 elements
        swapped = srtio3.copy()
        swapped.replace_species({"Sr": element})
        probes[f"{element}TiO3 (Sr -> {element}, unseen element)"] = swapped.as_dict()
    got = model.predict([{"structure": s} for s in probes.values()])
    test = model.predict(test_rows(zoo.load(folder)))
    return {"model": folder, "test_in_domain": share_in_domain(test), "n_test": len(test),
            "probes": {name: {k: r.get(k) for k in ("e_form", "e_form_sigma", "domain_score", "in_domain",
                                                    "unseen_elements", "error")}
                       for name, r in zip(probes, got)}}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--solubility", default=str(BUNDLED / "molecule-solubility"))
    p.add_argument("--materials", default=str(BUNDLED / "materials-property"))
    p.add_argument("--out", default=str(HERE / "results" / "trust-check.json"))
    args = p.parse_args()
    record = {"molecule-solubility": solubility(args.solubility), "materials-property": materials(args.materials),
              "command": "python benchmarks/trust_check.py"}
    s, m = record["molecule-solubility"], record["materials-property"]
    print(f"molecule-solubility: in domain {s['test_in_domain']:.0%} of {s['n_test']} test rows, "
          f"{s['unusual_in_domain']:.0%} of {s['n_unusual']} unusual molecules")
    print(f"materials-property: in domain {m['test_in_domain']:.0%} of {m['n_test']} test rows")
    for name, r in m["probes"].items():
        print(f"  {name}: domain_score {r['domain_score']:.2f}, in_domain {r['in_domain']}"
              + (f" (unseen: {r['unseen_elements']})" if r["unseen_elements"] else ""))
    Path(args.out).write_text(json.dumps(record, indent=2) + "\n")


if __name__ == "__main__":
    main()
