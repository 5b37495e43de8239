"""The `zoo` command: list, info, train, predict."""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import yaml

from encoders import ZooError
from zoo.artifacts import load, resolve_weights, sha256_file
from zoo.predict import predict_table
from zoo.registry import load_registry, parse_overrides
from zoo.tables import read_dataset
from zoo.train import Trainer


def data_path(spec, given: str | None) -> Path:
    """The training table: ``--data`` if given, else ``$ZOO_DATA/<dataset>/<file>``."""
    if given:
        return Path(given)
    root = os.environ.get("ZOO_DATA")
    if not root:
        raise ZooError(f"task {spec.name!r}: give --data PATH or set ZOO_DATA to the folder holding "
                       f"{spec.data.dataset}/{spec.data.file}")
    return Path(root) / spec.data.dataset / spec.data.file


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
        print(f"# weights: {resolve_weights(spec)}")
    except ZooError as err:
        print(f"# weights: {err}")
    return 0


def cmd_train(args) -> int:
    registry = load_registry(args.registry)
    spec = registry.task(args.task, parse_overrides(args.set))
    path = data_path(spec, args.data)
    rows = read_dataset(path, spec.data.reader)
    test = {}
    if spec.data.test_file:  # a fixed test set, beside the training file unless given
        test_path = Path(args.test_data) if args.test_data else path.parent / spec.data.test_file
        test = {"test_rows": read_dataset(test_path, spec.data.test_reader or spec.data.reader), "test_sha256": sha256_file(test_path)}
    _, metrics = Trainer(spec, out=Path(args.out)).fit(rows, data_sha256=sha256_file(path), **test)
    test = metrics.get("test", {}).get(spec.metric)
    print(f"{spec.name}: best epoch {metrics['best_epoch']}, val {spec.metric} {metrics['val'][spec.metric]:.4f}, "
          f"test {spec.metric} {test:.4f}; saved to {args.out}")
    return 0


def cmd_predict(args) -> int:
    registry = load_registry(args.registry)
    model = load(args.task, registry)
    summary = predict_table(model, args.input, args.output, chunk_rows=args.chunk_rows,
                            batch_size=args.batch_size, candidates=args.candidates, top=args.top)
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
    train.add_argument("task")
    train.add_argument("--data", help="the training table (default: $ZOO_DATA/<dataset>/<file>)")
    train.add_argument("--test-data", help="the fixed test set, for tasks that have one (default: the registry's "
                                          "test_file beside --data)")
    train.add_argument("--out", required=True, help="folder to write the trained model to")
    train.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                       help="override a registry key, e.g. train.epochs=5 (repeatable)")
    train.set_defaults(run=cmd_train)

    predict = sub.add_parser("predict", help="predict every row of a table")
    predict.add_argument("task", help="a registry task name or a trained model folder")
    predict.add_argument("--input", required=True, help="a .csv, .parquet or .jsonl table")
    predict.add_argument("--output", help="where to write (same formats); default: CSV on stdout")
    predict.add_argument("--batch-size", type=int, default=256)
    predict.add_argument("--chunk-rows", type=int, default=4096, help="rows read and written at a time")
    predict.add_argument("--candidates", help="retrieval tasks: the table of candidates to rank for each row")
    predict.add_argument("--top", type=int, default=10, help="retrieval tasks: how many candidates to list")
    predict.set_defaults(run=cmd_predict)
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        return args.run(args)
    except ZooError as err:
        print(f"zoo: error: {err}", file=sys.stderr)
        return 2
