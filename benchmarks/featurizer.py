"""Featurizer throughput: molecules/s of bare RDKit parsing, of our molecule featurizer and of chemprop's, over
the same SMILES in one process and on one core, in interleaved rounds (best of each).

    python benchmarks/featurizer.py [--rounds 3] [--limit N]      # prints the section as JSON

- (a) ``bare_parse``: ``Chem.MolFromSmiles`` (RDKit's default parse and sanitize), each molecule dropped at once;
- (b) ``ours``: ``MoleculeDMPNN.featurize`` one SMILES at a time (parse, sanitize, atom and bond categories), as a
  caller of ``featurize`` gets it; ``ours_many``: ``MoleculeDMPNN.featurize_many``, which prediction and training
  use (``featurize_rows``);
- (c) ``chemprop``: chemprop v2's ``SimpleMoleculeMolGraphFeaturizer`` (its default multi-hot atom and bond
  features) applied to ``Chem.MolFromSmiles``'s molecule, where chemprop can be imported;

and the ratios ``ours_over_bare_parse`` (b/a) and ``ours_over_chemprop`` (b/c). A SMILES that RDKit refuses costs
each what it costs it (our InputError, RDKit's None). ``featurizer_section(smiles, rounds)`` returns the same
dict for ``benchmarks/throughput.py --featurizer``.

SMILES: ESOL's 1,128 (``$ZOO_DATA/moleculenet_esol/delaney-processed.csv``, ZOO_DATA defaulting to
``shared/data`` beside the repository), else a generated list of chains, rings and aromatics.

chemprop is never a dependency of this package. The benchmark adds ``$CHEMPROP_PATH`` (default: ``chemprop-bench``
beside the repository) to ``sys.path``; that folder was made with

    pip install --target ../chemprop-bench chemprop==2.3.1 --no-deps

which leaves the environment's torch, RDKit and numpy as they are. chemprop's package ``__init__`` imports its
models (lightning) and its molecule-graph module imports ``cuik_molmaker`` (a compiled extension pinned to one
torch build), neither of which the featurizer uses: when ``import chemprop.featurizers`` fails, the benchmark loads
only the module files the featurizer is made of (``data/molgraph``, ``utils/utils``, ``featurizers/{base,atom,
bond}``, ``featurizers/molgraph/{mixins,molecule}``) under empty parent packages, with empty stand-ins for
``cuik_molmaker`` and ``multiprocess`` while they import. Where that fails too, ``chemprop`` is reported as
unavailable, with the reason.
"""
from __future__ import annotations

import argparse
import csv
import importlib
import importlib.util
import json
import os
import sys
import time
import types
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from rdkit import Chem, RDLogger  # noqa: E402

from encoders import InputError  # noqa: E402
from encoders.molecule import MoleculeDMPNN  # noqa: E402

RDLogger.DisableLog("rdApp.*")

# The files chemprop's SimpleMoleculeMolGraphFeaturizer is made of, in import order, and the packages above them.
_CHEMPROP_PACKAGES = ("chemprop", "chemprop.data", "chemprop.utils", "chemprop.featurizers",
                      "chemprop.featurizers.molgraph")
_CHEMPROP_MODULES = ("chemprop.data.molgraph", "chemprop.utils.utils", "chemprop.featurizers.base",
                     "chemprop.featurizers.atom", "chemprop.featurizers.bond", "chemprop.featurizers.molgraph.mixins",
                     "chemprop.featurizers.molgraph.molecule")
_CHEMPROP_UNUSED = ("cuik_molmaker", "multiprocess")  # imported at the top of those files, used elsewhere


def esol_smiles() -> tuple[list[str], str]:
    """ESOL's SMILES and where they came from, else a generated list."""
    data = Path(os.environ.get("ZOO_DATA", ROOT.parent / "shared" / "data"))
    path = data / "moleculenet_esol" / "delaney-processed.csv"
    if path.is_file():
        with open(path, newline="") as f:
            return [row["smiles"].strip() for row in csv.DictReader(f)], str(path)
    rings = ["c1ccccc1", "c1ccncc1", "C1CCCCC1", "c1ccc2ccccc2c1", "C1CCOC1", "c1ccsc1"]
    groups = ["O", "N", "Cl", "C(=O)O", "C#N", "OC", "C(F)(F)F", "[N+](=O)[O-]", "S(=O)(=O)N"]
    smiles = [f"{'C' * (i % 9 + 1)}{rings[i % len(rings)]}{groups[i % len(groups)]}" for i in range(1000)]
    return smiles, "generated"


def _forget_chemprop() -> None:
    for name in [n for n in sys.modules if n == "chemprop" or n.startswith("chemprop.")]:
        del sys.modules[name]


def load_chemprop() -> tuple[object | None, str]:
    """chemprop's ``SimpleMoleculeMolGraphFeaturizer()`` and how it was loaded, or None and why not."""
    path = os.environ.get("CHEMPROP_PATH", str(ROOT.parent / "chemprop-bench"))
    if path and Path(path).is_dir() and path not in sys.path:
        sys.path.insert(0, path)
    spec = importlib.util.find_spec("chemprop")
    if spec is None or not spec.submodule_search_locations:
        return None, f"unavailable: no chemprop package on sys.path (CHEMPROP_PATH={path!r})"
    version = "?"
    for dist in Path(spec.submodule_search_locations[0]).parent.glob("chemprop-*.dist-info"):
        version = dist.name.removeprefix("chemprop-").removesuffix(".dist-info")
    try:
        from chemprop.featurizers import SimpleMoleculeMolGraphFeaturizer
        return SimpleMoleculeMolGraphFeaturizer(), f"chemprop {version}, imported whole"
    except Exception as err:  # lightning, cuik_molmaker, ... not installed
        whole = f"{type(err).__name__}: {err}"
        _forget_chemprop()
    stand_ins = [name for name in _CHEMPROP_UNUSED if importlib.util.find_spec(name) is None]
    try:
        for name in stand_ins:
            sys.modules[name] = types.ModuleType(name)
        for name in _CHEMPROP_PACKAGES:
            package = types.ModuleType(name)
            package.__path__ = [str(Path(spec.submodule_search_locations[0], *name.split(".")[1:]))]
            sys.modules[name] = package
        for name in _CHEMPROP_MODULES:
            importlib.import_module(name)
        featurizer = sys.modules["chemprop.featurizers.molgraph.molecule"].SimpleMoleculeMolGraphFeaturizer()
    except Exception as err:
        _forget_chemprop()
        return None, f"unavailable: importing chemprop failed ({whole}); its featurizer files alone too " \
                     f"({type(err).__name__}: {err})"
    finally:
        for name in stand_ins:
            sys.modules.pop(name, None)
    return featurizer, (f"chemprop {version}, its featurizer files alone (the package did not import: {whole}; "
                        f"stand-ins for {', '.join(stand_ins) or 'nothing'})")


def featurizer_section(smiles: list[str], rounds: int = 3) -> dict:
    """Molecules/s of bare parsing, our featurizer and chemprop's over ``smiles``, interleaved, best of ``rounds``."""
    chemprop, chemprop_how = load_chemprop()

    def bare_parse():
        return sum(Chem.MolFromSmiles(s) is not None for s in smiles)

    def ours():
        done = 0
        for s in smiles:
            try:
                MoleculeDMPNN.featurize(s)
                done += 1
            except InputError:
                pass
        return done

    def ours_many():
        done = 0
        for start in range(0, len(smiles), 4096):
            done += sum(not isinstance(g, InputError) for g in MoleculeDMPNN.featurize_many(smiles[start : start + 4096]))
        return done

    def chemprop_featurize():
        done = 0
        for s in smiles:
            mol = Chem.MolFromSmiles(s)
            if mol is not None:
                chemprop(mol)
                done += 1
        return done

    runs = {"bare_parse": bare_parse, "ours": ours, "ours_many": ours_many}
    if chemprop is not None:
        runs["chemprop"] = chemprop_featurize
    best, done = {}, {}
    for _ in range(rounds):
        for name, run in runs.items():
            start = time.perf_counter()
            done[name] = run()
            best[name] = min(best.get(name, float("inf")), time.perf_counter() - start)
    rate = {name: len(smiles) / seconds for name, seconds in best.items()}
    report = {"smiles": len(smiles), "rounds": rounds, "parsed": done["bare_parse"], "featurized": done["ours"]}
    report |= {f"{name}_per_s": round(r, 1) for name, r in rate.items()}
    report["chemprop"] = chemprop_how
    report["ours_over_bare_parse"] = round(rate["ours"] / rate["bare_parse"], 3)
    report["ours_many_over_bare_parse"] = round(rate["ours_many"] / rate["bare_parse"], 3)
    if chemprop is not None:
        report["ours_over_chemprop"] = round(rate["ours"] / rate["chemprop"], 2)
        report["ours_many_over_chemprop"] = round(rate["ours_many"] / rate["chemprop"], 2)
    return report


def main() -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--limit", type=int, help="only the first N SMILES")
    args = p.parse_args()
    smiles, source = esol_smiles()
    report = {"source": source} | featurizer_section(smiles[: args.limit], args.rounds)
    print(json.dumps(report, indent=1))
    return report


if __name__ == "__main__":
    main()
