"""Throughput and memory, as ratios to the bare library doing the same work, measured in one run.

    python benchmarks/throughput.py [--rows [N]] [--workers 0 1 2 auto] [--device cpu|cuda] [--startup]
                                    [--featurizer] [--train] [--text [SENTENCES]] [--crystal [N]]

Molecules (default 200,000 rows): ``zoo predict molecule-solubility`` (the bundled model) in a fresh process over
a generated table with one bad row in 50, at each ``--workers`` count, each beside bare ``Chem.MolFromSmiles``
over the same SMILES in as many processes as featurize (one for ``--workers 0``): rows/s, the ratio to bare
parsing, the speed-up over the first worker count, peak RSS of the main process and peak PSS of all, and whether
the output is byte for byte the first count's; and the model's side alone, over rows featurized beforehand (the
ceiling of prediction on this machine were featurization free). ``--featurizer``: molecules/s of our featurizer against bare
parsing and chemprop's (``benchmarks/featurizer.py``). ``--startup``: a 5-row prediction's wall time beside
``import torch``'s. Training (``--train``): samples/s of one epoch per task family on generated rows
(molecules; words for the text tagger), on this machine's CPU threads; on a GPU machine also the bf16 speed-up.
Each run updates only its own sections of the results file.

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


# A child reports its own peak RSS as it exits: VmHWM, which starts anew at exec. (getrusage's ru_maxrss does not:
# a child spawned by a 2 GB benchmark process reports 2 GB.)
PEAK_KB = "int(next(l for l in open('/proc/self/status') if l.startswith('VmHWM')).split()[1])"
CHILD = (f"import sys; from zoo.cli import main; rc = main(sys.argv[1:]); "
         f"print('maxrss_kb', {PEAK_KB}, file=sys.stderr); sys.exit(rc)")


def run_sampled(argv: list[str]) -> tuple[subprocess.CompletedProcess, float | None]:
    """Run a command, sampling its process tree's memory every 0.2 s: (the finished process, the peak of the
    tree's summed PSS in MB, which counts pages shared by forked workers once; None without psutil)."""
    try:
        import psutil
    except ImportError:
        psutil = None
    proc = subprocess.Popen(argv, cwd=HERE.parent, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    peak = 0
    while psutil and proc.poll() is None:
        try:
            tree = [psutil.Process(proc.pid)] + psutil.Process(proc.pid).children(recursive=True)
            peak = max(peak, sum(p.memory_full_info().pss for p in tree))
        except psutil.Error:  # a process ended while being read
            pass
        time.sleep(0.2)
    out, err = proc.communicate()
    return subprocess.CompletedProcess(argv, proc.returncode, out, err), (round(peak / 2**20, 1) if psutil else None)


def table_smiles(i: int) -> str:
    return "C1CC" if i % 50 == 49 else SMILES[i % len(SMILES)]


def write_table(path: Path, n: int) -> None:
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["id", "smiles"])
        for i in range(n):
            w.writerow([i, table_smiles(i)])


def predict_run(table: Path, out: Path, workers: str = "0", device: str = "cpu") -> dict:
    """``zoo predict molecule-solubility`` over ``table`` in a fresh process: rate over the whole process
    (start, load, predict, write), peak RSS of the main process and peak memory of it and its workers together."""
    start = time.perf_counter()
    done, tree_pss = run_sampled([sys.executable, "-c", CHILD, "predict", "molecule-solubility", "--input", str(table),
                                  "--output", str(out), "--workers", workers, "--device", device])
    wall = time.perf_counter() - start
    if done.returncode:
        raise SystemExit(done.stderr)
    main_kb = int(done.stderr.rsplit("maxrss_kb", 1)[1])
    with open(out) as f:
        rows = list(csv.DictReader(f))
    return {"workers": workers, "rows": len(rows), "bad_rows_marked": sum(bool(r["error"]) for r in rows),
            "rows_per_s": round(len(rows) / wall, 1), "wall_s": round(wall, 1),
            "peak_rss_mb": round(main_kb / 1024, 1), "peak_pss_all_processes_mb": tree_pss,
            "predict_line": done.stderr.splitlines()[0][:160]}


def _parse_chunk(smiles: list[str]) -> int:
    from rdkit import Chem, RDLogger

    RDLogger.DisableLog("rdApp.*")
    return sum(Chem.MolFromSmiles(s) is not None for s in smiles)


def bare_parse_rate(smiles: list[str], processes: int) -> float:
    """SMILES/s of bare ``Chem.MolFromSmiles`` over ``smiles`` in ``processes`` processes (a fork pool, started
    outside the timing), the bar prediction is measured against."""
    import multiprocessing

    chunks = [smiles[i : i + 4096] for i in range(0, len(smiles), 4096)]
    if processes <= 1:
        start = time.perf_counter()
        for chunk in chunks:
            _parse_chunk(chunk)
        return len(smiles) / (time.perf_counter() - start)
    with multiprocessing.get_context("fork").Pool(processes) as pool:
        pool.map(_parse_chunk, [SMILES] * processes)  # started and warm
        start = time.perf_counter()
        pool.map(_parse_chunk, chunks, chunksize=1)
        return len(smiles) / (time.perf_counter() - start)


def worker_processes(workers: str) -> int:
    from zoo.model import resolve_workers

    return max(1, resolve_workers(workers))


def model_side_rate(smiles: list[str], device: str = "cpu") -> float:
    """Rows/s of the model's side of prediction alone (forward, decoding, trust columns) over rows featurized
    and collated beforehand, on all of this process's threads: what prediction would reach if featurization cost
    nothing."""
    import zoo
    from zoo.model import RowChunks, reuse_freed_memory

    reuse_freed_memory()  # as the zoo command does
    model = zoo.load("molecule-solubility", device=device)
    prepared = list(model.prepared(RowChunks([{"smiles": s} for s in smiles])))
    start = time.perf_counter()
    for chunk in prepared:
        model.describe(chunk)
    return len(smiles) / (time.perf_counter() - start)


def molecule_section(n: int, workers: list[str], device: str = "cpu") -> dict:
    """``zoo predict`` over an n-row table at each worker count, against bare parsing of the same SMILES in as
    many processes as featurize (1 for --workers 0), each pair measured back to back; outputs compared with
    --workers 0's."""
    smiles = [table_smiles(i) for i in range(n)]
    report = {"rows": n, "device": device, "runs": []}
    with tempfile.TemporaryDirectory() as tmp:
        table = Path(tmp) / "mols.csv"
        write_table(table, n)
        for w in workers:
            r = predict_run(table, Path(tmp) / f"out-{w}.csv", w, device)
            r["processes"] = worker_processes(w)
            r["bare_parse_per_s"] = round(bare_parse_rate(smiles, r["processes"]), 1)
            r["predict_over_bare_parse"] = round(r["rows_per_s"] / r["bare_parse_per_s"], 3)
            r["same_output_as_workers_0"] = (Path(tmp) / f"out-{w}.csv").read_bytes() == (Path(tmp) / f"out-{workers[0]}.csv").read_bytes()
            report["runs"].append(r)
            print(f"predict {n:,} rows, --workers {w} ({r['processes']} processes): {r['rows_per_s']:,.0f} rows/s = "
                  f"{r['predict_over_bare_parse']:.2f} of bare parsing in as many ({r['bare_parse_per_s']:,.0f}/s); "
                  f"peak RSS {r['peak_rss_mb']:,.0f} MB, all processes {r['peak_pss_all_processes_mb']} MB PSS; "
                  f"same output as --workers {workers[0]}: {r['same_output_as_workers_0']}", flush=True)
    report["model_side_rows_per_s"] = round(model_side_rate(smiles[:20_000], device), 1)
    print(f"the model's side alone (rows featurized beforehand): {report['model_side_rows_per_s']:,.0f} rows/s")
    base = report["runs"][0]["rows_per_s"]
    report["speedup_over_first"] = {r["workers"]: round(r["rows_per_s"] / base, 2) for r in report["runs"]}
    return report


def startup_section(runs: int = 5) -> dict:
    """Wall time of ``zoo predict molecule-solubility`` on a 5-row CSV in a fresh process, and of ``import torch``
    alone, median of ``runs`` interleaved."""
    import statistics

    with tempfile.TemporaryDirectory() as tmp:
        table = Path(tmp) / "five.csv"
        table.write_text("smiles\nCCO\nc1ccccc1\nCC(=O)O\nOc1ccccc1\nC1CC\n")
        walls = {"zoo predict, 5 rows": [], "import torch": []}
        for _ in range(runs):
            for name, argv in (("zoo predict, 5 rows", ["-m", "zoo", "predict", "molecule-solubility", "--input",
                                                        str(table), "--output", str(Path(tmp) / "out.csv")]),
                               ("import torch", ["-c", "import torch"])):
                start = time.perf_counter()
                subprocess.run([sys.executable, *argv], cwd=HERE.parent, capture_output=True, check=True)
                walls[name].append(time.perf_counter() - start)
    return {name: round(statistics.median(w), 2) for name, w in walls.items()}


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
TEXT_CHILD = ("import sys, time; start = time.perf_counter(); import zoo; from zoo.predict import predict_table; "
              "model = zoo.load('bio-ner'); loaded = time.perf_counter(); "
              "predict_table(model, sys.argv[1], sys.argv[2], progress=False); "
              "print('load_s', loaded - start, 'predict_s', time.perf_counter() - loaded, "
              f"'maxrss_kb', {PEAK_KB}, file=sys.stderr)")


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


def train_rate(task: str, rows: list[dict], overrides: dict, bf16: bool = False, workers: int = 0) -> float:
    """Samples/s of one training epoch from the rows (featurizing them included), with ``workers`` processes."""
    import zoo
    from zoo.model import reuse_freed_memory

    reuse_freed_memory()  # as the zoo command does
    spec = zoo.info(task, overrides={**overrides, "train.epochs": 1, "train.bf16": bf16})
    start = time.perf_counter()
    _, metrics = zoo.Trainer(spec, progress=False, workers=workers).fit(rows)
    return metrics["n_train"] / (time.perf_counter() - start)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rows", type=int, nargs="?", const=200_000, default=200_000,
                   help="molecule prediction over this many rows (default 200,000); 0 skips it")
    p.add_argument("--workers", nargs="+", default=["0", "1", "2", "auto"], help="worker counts to compare")
    p.add_argument("--device", default="cpu", help="the device zoo predict runs on")
    p.add_argument("--featurizer", action="store_true", help="also featurizer molecules/s against bare parsing "
                   "and chemprop's (benchmarks/featurizer.py)")
    p.add_argument("--startup", action="store_true", help="also a 5-row prediction's wall time")
    p.add_argument("--train", action="store_true", help="also measure training samples/s")
    p.add_argument("--text", type=int, nargs="?", const=2000, metavar="SENTENCES",
                   help="also measure zoo predict bio-ner over JNLPBA test sentences (default 2,000)")
    p.add_argument("--text-rounds", type=int, default=2)
    p.add_argument("--crystal", type=int, nargs="?", const=200, metavar="STRUCTURES",
                   help="also measure zoo predict materials-property over perovskites (default 200)")
    p.add_argument("--crystal-rounds", type=int, default=3)
    p.add_argument("--results", default=str(HERE / "results" / "throughput.json"))
    args = p.parse_args()
    report = json.loads(Path(args.results).read_text()) if Path(args.results).is_file() else {}
    report |= {"cpu_threads": torch.get_num_threads(), "cores": worker_processes("auto"),
               "cuda": torch.cuda.is_available()}  # sections not run this time keep their last figures
    if args.startup:
        report["startup_s"] = startup_section()
        print(f"startup: {report['startup_s']}")
    if args.featurizer:
        from featurizer import featurizer_section

        report["featurizer"] = featurizer_section([table_smiles(i) for i in range(20_000)])
        print(f"featurizer: {report['featurizer']}")
    if args.rows:
        report["predict"] = molecule_section(args.rows, args.workers, args.device)
    if args.train:
        molecules = [{"smiles": SMILES[i % len(SMILES)], "measured log solubility in mols per litre": i % 7}
                     for i in range(2000)]
        words = [{"text": ["IL-2", "activates", "the", "c-fos", "gene", "in", "T", "cells", "."] * 3,
                  "tags": ["B-protein", "O", "O", "B-DNA", "I-DNA", "O", "B-cell_type", "I-cell_type", "O"] * 3}
                 for _ in range(256)]
        report["train_samples_per_s"] = {
            "molecule-solubility (D-MPNN)": round(train_rate("molecule-solubility", molecules, {}), 1),
            "molecule-solubility (D-MPNN), --workers 2": round(train_rate("molecule-solubility", molecules, {},
                                                                          workers=2), 1),
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
