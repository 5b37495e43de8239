"""Throughput and memory: batch inference rows/s and peak RSS against table size, training samples/s.

    python benchmarks/throughput.py [--rows [50000 200000 ...]] [--train] [--text [SENTENCES]] [--crystal [N]]

Inference: ``zoo predict molecule-solubility`` (the bundled model) in a fresh process over a generated
molecule table with one bad row in 50; the child reports its own peak RSS (getrusage). Memory should stay flat
as the table grows, since rows stream through in chunks. Training: samples/s of one epoch per task family
on generated rows (molecules; words for the text tagger), on this machine's CPU threads. On a GPU machine
the training part also reports the bf16 autocast speed-up.

Text (``--text``, needs ``ZOO_DATA`` holding ``bioner_jnlpba/test.tsv``): ``zoo predict bio-ner`` in a fresh
process over the first 2,000 JNLPBA test sentences (a JSONL of word lists), against a bare forward of the same
merged members' MiniLMs at batch 32 sorted by length (the fastest way to run those weights, without
tokenizing, heads or decoding), interleaved over rounds so a shared machine slows both alike; the best round of
each is kept. Entity F1 is scored for that output and for the old path (LoRA unmerged, batches of 256 rows).

Crystal (``--crystal``, needs ``ZOO_DATA`` holding ``matbench_perovskites``): ``zoo predict materials-property``
over 200 perovskites against CHGNet's own ``predict_structure`` at batch 16 (``crystal_section``).
"""
from __future__ import annotations

import argparse
import csv
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
SMILES = ["CCO", "c1ccccc1", "CC(=O)Oc1ccccc1C(=O)O", "CC(=O)Nc1ccc(O)cc1", "Cn1cnc2c1c(=O)n(C)c(=O)n2C",
          "CC(C)Cc1ccc(cc1)C(C)C(=O)O", "OCC1OC(O)C(O)C(O)C1O", "Clc1ccc(cc1)C(c1ccccc1)N1CCN(C)CC1"]


# The child reports its own peak RSS (getrusage of itself) as it exits.
CHILD = ("import resource, sys; from zoo.cli import main; rc = main(sys.argv[1:]); "
         "print('maxrss_kb', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, file=sys.stderr); sys.exit(rc)")


def write_table(path: Path, n: int) -> None:
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["id", "smiles"])
        for i in range(n):
            w.writerow([i, "C1CC" if i % 50 == 49 else SMILES[i % len(SMILES)]])


def predict_run(n: int, work: Path) -> dict:
    table, out = work / f"mols-{n}.csv", work / f"pred-{n}.csv"
    write_table(table, n)
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", CHILD, "predict", "molecule-solubility", "--input", str(table),
                           "--output", str(out)], cwd=HERE.parent, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if done.returncode:
        raise SystemExit(done.stderr)
    peak_kb = int(done.stderr.rsplit("maxrss_kb", 1)[1])
    with open(out) as f:
        rows = list(csv.DictReader(f))
    return {"rows": n, "output_rows": len(rows), "bad_rows_marked": sum(bool(r["error"]) for r in rows),
            "rows_per_s": round(n / wall, 1), "wall_s": round(wall, 1), "peak_rss_mb": round(peak_kb / 1024, 1),
            "predict_line": done.stderr.splitlines()[0]}


def jnlpba_sentences(n: int) -> list[dict]:
    import zoo
    from tasks.ner import read_conll
    from zoo.data import data_file

    return read_conll(data_file(zoo.info("bio-ner"), "test.tsv"))[:n]


def entity_f1(sentences: list[dict], predicted: list[dict]) -> float:
    """Micro entity F1 (conlleval's exact spans) of predicted entity lists against the sentences' gold tags."""
    from tasks.ner import entity_scores

    tags = []
    for s, p in zip(sentences, predicted):
        row = ["O"] * len(s["tags"])
        for e in p["entities"]:
            row[e["first_word"] : e["last_word"] + 1] = [f"B-{e['type']}"] + [f"I-{e['type']}"] * (e["last_word"] - e["first_word"])
        tags.append(row)
    return round(entity_scores([s["tags"] for s in sentences], tags)["micro"]["f1"], 4)


# ``zoo predict``'s own path (load, then predict_table at its default batch size), timing the load apart: a
# fixed cost of seconds that does not grow with the table.
TEXT_CHILD = ("import resource, sys, time; start = time.perf_counter(); import zoo; from zoo.predict import predict_table; "
              "model = zoo.load('bio-ner'); loaded = time.perf_counter(); "
              "predict_table(model, sys.argv[1], sys.argv[2], progress=False); "
              "print('load_s', loaded - start, 'predict_s', time.perf_counter() - loaded, "
              "'maxrss_kb', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, file=sys.stderr)")


def text_predict_run(sentences: list[dict], work: Path) -> tuple[dict, list[dict]]:
    """``zoo predict bio-ner`` in a fresh process: its rate (without the model's load), peak RSS, output rows."""
    table, out = work / "sentences.jsonl", work / "entities.jsonl"
    table.write_text("".join(json.dumps({"id": i, "text": s["text"]}) + "\n" for i, s in enumerate(sentences)))
    out.unlink(missing_ok=True)
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", TEXT_CHILD, str(table), str(out)], cwd=HERE.parent,
                          capture_output=True, text=True)
    wall = time.perf_counter() - start
    if done.returncode:
        raise SystemExit(done.stderr)
    load_s, _, predict_s, _, peak_kb = done.stderr.rsplit("load_s", 1)[1].split()
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    for r in rows:  # a nested column may come back as JSON text
        r["entities"] = json.loads(r["entities"]) if isinstance(r["entities"], str) else r["entities"]
    return {"sentences_per_s": round(len(sentences) / float(predict_s), 1), "load_s": round(float(load_s), 1),
            "process_wall_s": round(wall, 1), "peak_rss_mb": round(int(peak_kb) / 1024, 1)}, rows


def bare_forward_rate(model, sentences: list[dict], batch: int = 32) -> float:
    """Sentences/s of the ensemble members' backbones alone over pre-tokenized word pieces, sorted by length."""
    features = sorted((model.featurize({"text": s["text"]})["text"] for s in sentences), key=lambda f: len(f.ids))
    backbones = [m.encoders[m.spec.inputs["text"].encoder].bert for m in getattr(model, "members", [model])]
    encoder = model.encoders[model.spec.inputs["text"].encoder]
    batches = [encoder.collate(features[i : i + batch]) for i in range(0, len(features), batch)]
    start = time.perf_counter()
    with torch.inference_mode():
        for b in batches:
            for bert in backbones:
                bert(input_ids=b["ids"], attention_mask=b["mask"].long())
    return len(sentences) / (time.perf_counter() - start)


def text_section(n: int, rounds: int) -> dict:
    import zoo

    sentences = jnlpba_sentences(n)
    merged = zoo.load("bio-ner")
    report = {"sentences": len(sentences), "rounds": rounds, "predict": [], "bare_forward_sentences_per_s": []}
    with tempfile.TemporaryDirectory() as tmp:
        for _ in range(rounds):
            r, rows = text_predict_run(sentences, Path(tmp))
            report["predict"].append(r)
            report["bare_forward_sentences_per_s"].append(round(bare_forward_rate(merged, sentences), 1))
    best = max(r["sentences_per_s"] for r in report["predict"])
    report["bare_over_predict"] = round(max(report["bare_forward_sentences_per_s"]) / best, 2)
    unmerged, start = zoo.load("bio-ner", merge=False), time.perf_counter()
    old = unmerged.predict([{"text": s["text"]} for s in sentences], batch_size=256, tokens=None)
    report["old_path_sentences_per_s"] = round(len(sentences) / (time.perf_counter() - start), 1)  # one pass, in process
    report["entity_f1"] = {"zoo predict": entity_f1(sentences, rows), "old path": entity_f1(sentences, old)}
    report["same_entities"] = sum(r["entities"] == o["entities"] for r, o in zip(rows, old))
    return report


def perovskite_structures(n: int) -> list[dict]:
    """The first ``n`` structures of the materials-property data (pymatgen dicts)."""
    import gzip

    import zoo
    from zoo.data import data_file

    spec = zoo.info("materials-property")
    with gzip.open(data_file(spec, spec.data.file), "rt") as f:
        return [json.loads(line)["structure"] for line, _ in zip(f, range(n))]


def chgnet_rate(structures: list, threads: int) -> float:
    """Structures/s of CHGNet's own ``predict_structure`` at batch 16, asked for what the encoder takes."""
    from encoders.crystal import chgnet_backbone

    backbone, before = chgnet_backbone("0.3.0"), torch.get_num_threads()
    torch.set_num_threads(threads)
    start = time.perf_counter()
    backbone.predict_structure(structures, task="e", return_atom_feas=True, return_site_energies=True, batch_size=16)
    rate = len(structures) / (time.perf_counter() - start)
    torch.set_num_threads(before)
    return rate


def crystal_section(n: int, rounds: int) -> dict:
    """``zoo predict materials-property`` (the bundled model, in this process, its load apart) over ``n``
    perovskites from a JSONL of pymatgen JSON, against CHGNet's ``predict_structure`` (batch 16) on the same
    structures already built, at one thread and at torch's default (the faster is the bar), interleaved over
    rounds so a shared machine slows both alike; the best round of each is kept. Features: CHGNet's batched
    ones against one cell at a time."""
    import numpy as np
    from pymatgen.core import Structure

    import zoo
    from zoo.predict import predict_table

    dicts = perovskite_structures(n)
    structures = [Structure.from_dict(d) for d in dicts]
    model = zoo.load("materials-property")
    encoder = model.encoders[model.spec.inputs["structure"].encoder]
    threads = sorted({1, torch.get_num_threads()})
    report = {"structures": len(dicts), "rounds": rounds, "predict_per_s": [],
              "chgnet_per_s_by_threads": {t: [] for t in threads}}
    with tempfile.TemporaryDirectory() as tmp:
        table = Path(tmp) / "perovskites.jsonl"
        table.write_text("".join(json.dumps({"id": i, "structure": json.dumps(d)}) + "\n" for i, d in enumerate(dicts)))
        model.predict([{"structure": dicts[0]}])  # loads CHGNet outside the timing
        for _ in range(rounds):
            start = time.perf_counter()
            predict_table(model, table, Path(tmp) / "out.csv", progress=False)
            report["predict_per_s"].append(round(len(dicts) / (time.perf_counter() - start), 1))
            for t in threads:
                report["chgnet_per_s_by_threads"][t].append(round(chgnet_rate(structures, t), 1))
        start = time.perf_counter()
        one = [encoder.featurize(d) for d in dicts]
        report["one_at_a_time_featurize_per_s"] = round(len(dicts) / (time.perf_counter() - start), 1)
    many = encoder.featurize_many(dicts)
    report["features_max_abs_diff"] = float(max(np.abs(a.features - b.features).max() for a, b in zip(one, many)))
    chgnet = max(max(rates) for rates in report["chgnet_per_s_by_threads"].values())
    report["predict_over_chgnet"] = round(max(report["predict_per_s"]) / chgnet, 2)
    return report


def train_rate(task: str, rows: list[dict], overrides: dict, bf16: bool = False) -> float:
    import zoo

    spec = zoo.info(task, overrides={**overrides, "train.epochs": 1, "train.bf16": bf16})
    start = time.perf_counter()
    _, metrics = zoo.Trainer(spec, progress=False).fit(rows)
    return metrics["n_train"] / (time.perf_counter() - start)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rows", type=int, nargs="*", default=[50_000, 200_000], help="none: skip this part")
    p.add_argument("--train", action="store_true", help="also measure training samples/s")
    p.add_argument("--text", type=int, nargs="?", const=2000, metavar="SENTENCES",
                   help="also measure zoo predict bio-ner over JNLPBA test sentences (default 2,000)")
    p.add_argument("--text-rounds", type=int, default=2)
    p.add_argument("--crystal", type=int, nargs="?", const=200, metavar="STRUCTURES",
                   help="also measure zoo predict materials-property over perovskites (default 200)")
    p.add_argument("--crystal-rounds", type=int, default=3)
    p.add_argument("--results", default=str(HERE / "results" / "throughput.json"))
    args = p.parse_args()
    report = {"cpu_threads": torch.get_num_threads(), "cuda": torch.cuda.is_available(), "predict": []}
    with tempfile.TemporaryDirectory() as tmp:
        for n in args.rows:
            r = predict_run(n, Path(tmp))
            report["predict"].append(r)
            print(f"predict {n:>9,} rows: {r['rows_per_s']:>8,.0f} rows/s, peak RSS {r['peak_rss_mb']:,.0f} MB, "
                  f"{r['output_rows']:,} rows out, {r['bad_rows_marked']:,} bad rows marked")
    if args.train:
        molecules = [{"smiles": SMILES[i % len(SMILES)], "measured log solubility in mols per litre": i % 7}
                     for i in range(2000)]
        words = [{"text": ["IL-2", "activates", "the", "c-fos", "gene", "in", "T", "cells", "."] * 3,
                  "tags": ["B-protein", "O", "O", "B-DNA", "I-DNA", "O", "B-cell_type", "I-cell_type", "O"] * 3}
                 for _ in range(256)]
        report["train_samples_per_s"] = {
            "molecule-solubility (D-MPNN)": round(train_rate("molecule-solubility", molecules, {}), 1),
            "bio-ner (MiniLM, LoRA)": round(train_rate("bio-ner", words, {}), 1),
        }
        if torch.cuda.is_available():
            report["train_samples_per_s"]["bio-ner (MiniLM, LoRA, bf16)"] = round(
                train_rate("bio-ner", words, {}, bf16=True), 1)
        for name, rate in report["train_samples_per_s"].items():
            print(f"train {name}: {rate:,.0f} samples/s")
    if args.text:
        t = report["text"] = text_section(args.text, args.text_rounds)
        print(f"text: zoo predict bio-ner {max(r['sentences_per_s'] for r in t['predict']):,.1f} sentences/s "
              f"(peak RSS {max(r['peak_rss_mb'] for r in t['predict']):,.0f} MB), bare forward of its members "
              f"{max(t['bare_forward_sentences_per_s']):,.1f}: {t['bare_over_predict']}x (old path "
              f"{t['old_path_sentences_per_s']:,.1f}); entity F1 {t['entity_f1']}, "
              f"{t['same_entities']:,} of {t['sentences']:,} sentences with the same entities as the old path")
    if args.crystal:
        c = report["crystal"] = crystal_section(args.crystal, args.crystal_rounds)
        print(f"crystal: zoo predict materials-property {max(c['predict_per_s']):,.1f} structures/s against "
              f"CHGNet's predict_structure at batch 16: {c['predict_over_chgnet']}x (one cell at a time "
              f"{c['one_at_a_time_featurize_per_s']:,.1f}/s); features max abs diff {c['features_max_abs_diff']:.1e}")
    Path(args.results).write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.results}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
