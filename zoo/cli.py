"""The `zoo` command: list, info, train, predict, bench."""
from __future__ import annotations

import argparse
import atexit
import contextlib
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import NoReturn

import yaml

from encoders import ZooError
from zoo.data import data_file
from zoo.artifacts import atomic_write_text, load, load_artifact, resolve_weights, sha256_file
from zoo.distributed import process_group, rank_and_world
from zoo.predict import check_output, predict_table
from zoo.registry import load_registry, parse_overrides, validate_task
from zoo.tables import read_dataset
from zoo.model import resolve_device, resolve_workers, reuse_freed_memory
from zoo.train import CHECKPOINT, Trainer, calibrate, fixed_test_set, saved_task, train_lock
from zoo.trust import DOMAIN_QUANTILE


RUN_FILE = "run.yaml"  # what a training run was started with, so --resume needs nothing else


def _test_file(spec, data: Path, beside: bool) -> str | None:
    """A task's fixed test file: beside a ``--data`` the user gave, else from ZOO_DATA or the download cache."""
    if not spec.data.test_file:
        return None
    return str(data.parent / spec.data.test_file if beside else data_file(spec, spec.data.test_file))


def _overrides(args) -> dict[str, object]:
    """``--set`` pairs, with chemprop's ``--splits-column`` and ``--splits-file`` as the split keys they stand for."""
    out = parse_overrides(args.set)
    if args.splits_column and args.splits_file:
        raise ZooError("--splits-column and --splits-file are two ways to give a split: give one")
    if args.splits_column:
        out |= {"data.split": "column", "data.split_column": args.splits_column}
    if args.splits_file:
        out |= {"data.split": "file", "data.split_file": args.splits_file}
    return out


def _split_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--splits-column", metavar="COLUMN", help="the column naming each row's set: train, val or test "
                   "(the registry's data.split: column)")
    p.add_argument("--splits-file", metavar="JSON", help="chemprop's splits file: a list of {train, val, test} row "
                   "indices, the k-th for seed k (the registry's data.split: file)")


def cmd_list(args) -> int:
    registry = load_registry(args.registry)
    for name in registry.names():
        spec = registry.task(name)
        inputs = "+".join(f"{i.column}:{i.encoder}" for i in spec.inputs.values())
        print(f"{name:<24} {inputs:<32} {spec.metric:<8} {spec.description}")
    return 0


def cmd_info(args) -> int:
    registry = load_registry(args.registry)
    spec = registry.task(args.task, parse_overrides(args.set))
    print(yaml.safe_dump(spec.model_dump(mode="json"), sort_keys=False), end="")
    try:
        print(f"# weights: {resolve_weights(spec, registry)}")
    except ZooError as err:
        print(f"# weights: {err}")
    return 0


def cmd_train(args) -> int:
    device = resolve_device(args.device)  # a device not here, or a bad worker count, fails before anything starts
    resolve_workers(args.workers)
    if args.devices > 1 and "WORLD_SIZE" not in os.environ:  # launch ourselves under torchrun
        argv = [a for a in sys.argv[1:] if a != f"--devices={args.devices}"]
        if "--devices" in argv:
            i = argv.index("--devices")
            argv = argv[:i] + argv[i + 2 :]
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={args.devices}",
                   "-m", "zoo", *argv]
        return subprocess.run(command).returncode
    out = Path(args.out or args.resume or "")
    if args.resume:  # the run's own record says which task entry and data it was
        if not (out / RUN_FILE).is_file():
            raise ZooError(f"{out}: nothing to resume (no {RUN_FILE}; was it trained with --out {out}?)")
        run = yaml.safe_load((out / RUN_FILE).read_text())
        spec, path, test_path = validate_task(run["task"]), Path(run["data"]), run["test_data"]
    elif args.task and args.out:
        spec = load_registry(args.registry).task(args.task, _overrides(args))
        path = Path(args.data) if args.data else data_file(spec, spec.data.file)
        test_path = args.test_data or _test_file(spec, path, beside=bool(args.data))
        if spec.data.split_file:  # the run's record must find it from wherever --resume is run
            spec.data.split_file = str(Path(spec.data.split_file).resolve())
    else:
        raise ZooError("zoo train needs a TASK and --out DIR, or --resume DIR")
    rows, test = read_dataset(path, spec.data.reader), fixed_test_set(spec, test_path)
    made = not out.exists()
    with process_group(device):
        rank = rank_and_world()[0]
        # The lock before run.yaml: a second run into a busy --out must refuse before it rewrites the record
        # that the first needs to resume (fit takes the same lock again, which passes within this process).
        with train_lock(out) if rank == 0 else contextlib.nullcontext():
            try:
                if not args.resume and rank == 0:
                    run = {"task": spec.model_dump(mode="json"), "data": str(path.resolve()),
                           "test_data": test_path and str(Path(test_path).resolve())}
                    atomic_write_text(out / RUN_FILE, yaml.safe_dump(run, sort_keys=False))
                trainer = Trainer(spec, out=out, device=args.device, workers=args.workers)
                _, metrics = trainer.fit(rows, data_sha256=sha256_file(path), resume=bool(args.resume), **test)
            except ZooError:  # refused before any checkpoint (a missing column, say): leave no half-begun --out
                if rank == 0 and not args.resume and not any(out.rglob(CHECKPOINT)):
                    if made:
                        shutil.rmtree(out)
                    else:
                        (out / RUN_FILE).unlink(missing_ok=True)
                raise
    if rank == 0:
        score = metrics.get("test", {}).get(spec.metric)
        tested = f"test {spec.metric} {score:.4f}" if score is not None else "no test set"
        print(f"{spec.name}: best epoch {metrics['best_epoch']}, val {spec.metric} "
              f"{metrics['val'][spec.metric]:.4f}, {tested}; saved to {out}")
    return 0


def cmd_calibrate(args) -> int:
    """Add a trust summary to a model folder saved without one, from the table it was trained on."""
    model = load_artifact(args.model, device="cpu")
    task = saved_task(model)
    path = Path(args.data) if args.data else data_file(task, task.data.file)
    calibrate(model, Path(args.model), read_dataset(path, task.data.reader), sha256_file(path),
              resolve_workers(args.workers))
    print(f"{args.model}: trust summary written (in domain up to the validation rows' {DOMAIN_QUANTILE:.0%} quantile)")
    return 0


def cmd_predict(args) -> int:
    if args.output:
        check_output(args.output)  # before loading the model, not after predicting everything
    elif args.resume:
        raise ZooError("--resume needs --output: it continues the parts an interrupted run left beside it")
    registry = load_registry(args.registry)
    model = load(args.task, registry, device=args.device)
    with process_group(model.device):
        summary = predict_table(model, args.input, args.output, chunk_rows=args.chunk_rows,
                                batch_size=args.batch_size, candidates=args.candidates, top=args.top,
                                resume=args.resume, workers=args.workers, interval=args.interval)
        if rank_and_world()[0]:
            return 0  # rank 0 joined the output and reports for all
    print(summary.line(), file=sys.stderr)
    return 1 if summary.rows and summary.n_failed == summary.rows else 0


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="zoo", description="SciZoo: multimodal scientific models from a registry.")
    p.add_argument("--registry", help="a registry YAML of your own, added to the built-in one")
    sub = p.add_subparsers(dest="command", required=True)

    sub.add_parser("list", help="the registry's tasks").set_defaults(run=cmd_list)

    info = sub.add_parser("info", help="a task's resolved entry and where its weights are")
    info.add_argument("task")
    info.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    info.set_defaults(run=cmd_info)

    train = sub.add_parser("train", help="train a task's model and save it as a folder")
    train.add_argument("task", nargs="?", help="a registry task (not needed with --resume)")
    train.add_argument("--data", help="the training table (default: $ZOO_DATA/<dataset>/<file>, else downloaded, hash-checked)")
    train.add_argument("--test-data", help="the fixed test set, for tasks that have one (default: the registry's "
                                          "test_file beside --data)")
    train.add_argument("--out", help="folder to write the trained model (and its checkpoints) to")
    train.add_argument("--resume", metavar="DIR", help="continue the run killed in DIR from its last checkpoint")
    train.add_argument("--devices", type=int, default=1,
                       help="processes to train on (GPUs, or CPU processes): launches torchrun itself")
    train.add_argument("--device", default="auto", help="auto (the GPU when there is one, else the CPU; with "
                       "--devices, each process its own GPU), cpu, cuda or cuda:N")
    train.add_argument("--workers", default="0", help="processes that featurize the rows and collate each batch "
                       "ahead of the model (auto: one per core, shared by the --devices processes; default 0: in "
                       "the main process); the result does not depend on it")
    train.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                       help="override a registry key, e.g. train.epochs=5 (repeatable)")
    _split_options(train)
    train.set_defaults(run=cmd_train)

    calibrate_ = sub.add_parser("calibrate", help="add a trust summary (sigma, intervals, domain) to a model saved "
                                                  "without one")
    calibrate_.add_argument("model", help="a trained model folder")
    calibrate_.add_argument("--data", help="the table it was trained on (default: as its task entry says)")
    calibrate_.add_argument("--workers", default="0", help="processes that featurize (auto: one per core)")
    calibrate_.set_defaults(run=cmd_calibrate)

    predict = sub.add_parser("predict", help="predict every row of a table")
    predict.add_argument("task", help="a registry task name or a trained model folder")
    predict.add_argument("--input", required=True, help="a .csv, .parquet or .jsonl table")
    predict.add_argument("--output", help="where to write (same formats); default: CSV on stdout")
    predict.add_argument("--batch-size", type=int, default=256)
    predict.add_argument("--chunk-rows", type=int, default=4096, help="rows read and written at a time")
    predict.add_argument("--candidates", help="retrieval tasks: the table of candidates to rank for each row")
    predict.add_argument("--top", type=int, default=10, help="retrieval tasks: how many candidates to list")
    predict.add_argument("--workers", default="0", help="processes that featurize and collate the next chunks "
                         "while the model runs (auto: one per core; default 0: in the main process)")
    predict.add_argument("--interval", type=float, metavar="COVERAGE", help="conformal intervals (regression: "
                         "<target>_low, <target>_high) or prediction sets (classification) holding the true value at "
                         "this rate, e.g. 0.9, calibrated on the model's validation rows")
    predict.add_argument("--device", default="auto", help="auto (the GPU when there is one), cpu, cuda or cuda:N")
    predict.add_argument("--resume", action="store_true",
                         help="keep the chunks an interrupted run into the same --output finished (refused "
                              "if that run had another input, chunk size, model or candidates)")
    predict.set_defaults(run=cmd_predict)

    bench = sub.add_parser("bench", help="reproduce a task's benchmark (or all) and write its results and plots")
    bench.add_argument("task", help="a registry task, or 'all'")
    bench.add_argument("--seeds", "--folds", dest="seeds", type=int, nargs="+",
                       help="split seeds (Matbench: test folds); default: the registry's")
    bench.add_argument("--variants", nargs="+", help="which of the task's bench variants to run (default: all)")
    bench.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a registry key")
    _split_options(bench)
    bench.add_argument("--data", help="one task's data file, instead of $ZOO_DATA or the download cache")
    bench.add_argument("--results", help="folder for the JSON and plots (default: benchmarks/results, "
                                         "or benchmarks/results/quick with --quick)")
    bench.add_argument("--quick", action="store_true",
                       help="the task's own variant on a few hundred rows, two epochs, the first seed: checks the "
                            "protocol runs (not comparable with anything)")
    bench.add_argument("--bundle", action="store_true", help="ship the best-validation run as the bundled weights")
    bench.add_argument("--work", help="keep each run's folder here (model, log, checkpoints); run again with the "
                                      "same folder, a killed run resumes and a finished one is not retrained")
    bench.add_argument("--merge", action="store_true",
                       help="keep the runs of the task's earlier results file that this call does not redo")
    bench.set_defaults(run=cmd_bench)
    return p


def cmd_bench(args) -> int:
    from zoo.bench import QUICK_EPOCHS, QUICK_NOTE, QUICK_ROWS, bench_task, bundle_dir  # plotting: only when bench runs

    registry = load_registry(args.registry)
    names = registry.names() if args.task == "all" else [registry.task(args.task).name]
    if args.bundle and args.quick:
        raise ZooError("--bundle ships weights: not from a --quick run")
    if args.bundle:
        bundle_dir()  # a source tree, or one line saying why not (for 'all', once)
    if args.data and len(names) > 1:
        raise ZooError("--data names one task's file: give a TASK, not 'all'")
    results = Path(args.results or ("benchmarks/results/quick" if args.quick else "benchmarks/results"))
    if args.quick:
        which = "the variants named" if args.variants else "each task's own variant"
        print(f"--quick: a smoke test that each task's protocol runs ({QUICK_ROWS} rows, at most {QUICK_EPOCHS} "
              f"epochs, the first seed, {which}); "
              f"{QUICK_NOTE} with published references or full runs, and none are shown\n")
    failed, took, started = [], {}, time.perf_counter()
    for name in names:
        began = time.perf_counter()
        try:
            bench_task(registry, name, seeds=args.seeds, variants=args.variants, overrides=_overrides(args),
                       results=results, quick=args.quick, bundle=args.bundle, data=args.data,
                       merge=args.merge, work=args.work and Path(args.work))
        except ZooError as err:
            if len(names) == 1:
                raise
            print(f"zoo: error: {name}: {err}", file=sys.stderr)
            failed.append(name)
        took[name] = time.perf_counter() - began
    print(f"\nbenched {len(names) - len(failed)} of {len(names)} tasks in {time.perf_counter() - started:.0f} s"
          + (f"; failed: {', '.join(failed)}" if failed else ""))
    if len(names) > 1:
        print("  " + ", ".join(f"{name} {s:.0f} s" for name, s in took.items()))
    if args.quick:
        print(f"({QUICK_NOTE}: these numbers only show the protocol runs)")
    return 1 if failed else 0


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    reuse_freed_memory()  # this process is the command's alone
    try:
        return args.run(args)
    except ZooError as err:
        print(f"zoo: error: {err}", file=sys.stderr)
        return 2


def console() -> NoReturn:
    """The installed ``zoo`` script and ``python -m zoo``: `main`, then a quick exit.

    Python's teardown of torch's thousands of modules takes about 0.4 s, a fifth of a short prediction. Once the
    command is done, with no worker thread still running, the exit handlers run (multiprocessing, logging, tqdm),
    the standard streams are flushed and the process ends without that teardown."""
    code = main()
    if any(not t.daemon for t in threading.enumerate() if t is not threading.main_thread()):
        sys.exit(code)  # a thread still working is waited for, as Python does
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError):  # a reader that closed the pipe early, e.g. `| head`
            stream.flush()
    os._exit(code)
