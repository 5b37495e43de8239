"""One Trainer for every task: AdamW, linear warm-up then cosine decay, gradient clipping and accumulation,
early stopping on the task's validation metric, seeded, with per-epoch metrics (and wall time, ``epoch_s``) appended
to ``metrics.jsonl``.

With ``ema`` the weights validated, kept and saved are an exponential moving average of the trained ones
(``torch.optim.swa_utils``): a smoother minimum than any single step's, for tasks that overfit late. With
``ensemble`` K, K models are trained one after another on the one split (seeds seed .. seed+K-1, each with its
own early stopping) and saved as one ``Ensemble`` whose outputs are their mean.

The same loop runs in one process or under torchrun (DDP: gloo on CPU, NCCL on GPU, bf16 autocast on GPU), on
the ``device`` asked for (``auto``: the GPU when there is one). Each epoch's batches are a function of (seed,
epoch), drawn in the main process, and a checkpoint holds the position inside the epoch, so a run killed at any
point resumes to the same result. With ``workers`` the rows are featurized, and each batch collated, in
``torch.utils.data.DataLoader`` worker processes (kept for the whole run; pinned memory on CUDA) ahead of the
model: the same batches in the same order as in one process, so the result does not depend on the count.
"""
from __future__ import annotations

import contextlib
import csv
import json
import math
import random
import sys
import time
import typing
from dataclasses import dataclass, field
from typing import NamedTuple
from pathlib import Path

import numpy as np
import torch
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from encoders import ZooError
from tasks import METRICS, SPLITS, column_split, file_split, score
from zoo.artifacts import atomic_write, atomic_write_text, exclusive, save, sha256_file
from zoo.cache import cache_path, load_features, save_features
from zoo.checkpoint import NAME as CHECKPOINT, load_checkpoint, rng_state, save_checkpoint, set_rng_state
from zoo.distributed import rank_and_world
from zoo.model import (FEATURIZE_ROWS, Ensemble, ZooModel, feature_size, resolve_device, resolve_workers,
                       to_device)
from zoo.registry import MODEL_KEYS, DataSpec, TaskSpec, validate_task
from zoo.tables import read_dataset
from zoo.trust import calibration, fit_trust, model_spread, row_elements


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


@dataclass
class Prepared:
    """Featurized rows with targets; ``rows`` is where each sits in the table of ``n_rows``, and ``skipped``
    lists (row, reason) of rows that could not be used."""

    features: list[dict]
    targets: np.ndarray
    keys: list
    rows: np.ndarray
    n_rows: int
    skipped: list[tuple[int, str]] = field(default_factory=list)


def feature_types(model: ZooModel) -> dict[str, type]:
    """The feature dataclass each input's encoder returns (its ``featurize`` return annotation)."""
    return {name: typing.get_type_hints(model.encoders[i.encoder].featurize)["return"]
            for name, i in model.spec.inputs.items()}


class _Featurize(Dataset):
    """Item k: the rows at positions ``chunks[k]`` featurized together (``featurize_rows``), as (features, None)
    or (None, why) each."""

    def __init__(self, model: ZooModel, rows: list[dict], chunks: list[list[int]]):
        self.model, self.rows, self.chunks = model, rows, chunks

    def __len__(self) -> int:
        return len(self.chunks)

    def __getitem__(self, k: int) -> list[tuple[dict | None, str | None]]:
        return [(f, None if err is None else str(err))
                for f, err in self.model.featurize_rows([self.rows[i] for i in self.chunks[k]])]


def _as_is(item):
    return item


def prepare(model: ZooModel, rows: list[dict], progress: bool = True, data_sha256: str | None = None,
            workers: int = 0) -> Prepared:
    """Featurize every row with a target, in chunks of ``FEATURIZE_ROWS`` (in ``workers`` processes, or here);
    with the data's sha256 the features are cached on disk."""
    spec = model.spec
    key_column = (spec.data.split_column if spec.data.split == "column"
                  else spec.data.split_key or next(iter(spec.inputs.values())).column)
    needed = [i.column for i in spec.inputs.values()] + list(spec.head.targets.values())
    needed += [key_column] if spec.data.split == "column" else []
    absent = [c for c in dict.fromkeys(needed) if not rows or c not in rows[0]]
    if absent:
        raise ZooError(f"task {spec.name!r}: the training data has no column {', '.join(map(repr, absent))}"
                       f" (columns: {', '.join(rows[0]) if rows else 'none, no rows'})")
    targets = model.targets(rows)
    cached = cache_path(spec, data_sha256) if data_sha256 else None
    if cached and cached.is_file():
        features, extra = load_features(cached, feature_types(model))
        kept = extra["kept"].tolist()
        skipped = list(zip(extra["skipped"].tolist(), extra["reasons"].tolist()))
    else:
        features, kept, skipped = [], [], []
        no_target = f"no target in {', '.join(repr(c) for c in spec.head.targets.values())}"
        chunks, usable = [], []  # in chunks, for encoders that batch (CHGNet)
        for start in range(0, len(rows), FEATURIZE_ROWS):
            chunk = range(start, min(start + FEATURIZE_ROWS, len(rows)))
            chunks.append(len(chunk))
            usable.append([i for i in chunk if not np.isnan(targets[i]).all()])
            skipped += [(i, no_target) for i in sorted(set(chunk) - set(usable[-1]))]
        dataset = _Featurize(model, rows, usable)
        featurized = (dataset[k] for k in range(len(dataset)))
        if workers:  # chunks come back in order; a generator of its own leaves the global RNG as it was
            featurized = DataLoader(dataset, batch_size=None, collate_fn=_as_is, num_workers=workers,
                                    generator=torch.Generator())
        with tqdm(total=len(rows), desc="featurize", unit="row", disable=None if progress else True,
                  leave=False) as bar:
            for n, index, results in zip(chunks, usable, featurized):
                for i, (f, why) in zip(index, results):
                    if why is None:
                        features.append(f)
                        kept.append(i)
                    else:
                        skipped.append((i, why))
                bar.update(n)
        skipped.sort(key=lambda item: item[0])  # in row order, as reported
        if cached and kept:
            save_features(cached, features, feature_types(model), {
                "kept": np.array(kept, dtype=np.int64), "skipped": np.array([i for i, _ in skipped], dtype=np.int64),
                "reasons": np.array([why for _, why in skipped], dtype=str)})
    if not kept:
        first = f" (row {skipped[0][0]}: {skipped[0][1]})" if skipped else ""
        raise ZooError(f"task {spec.name!r}: no usable training rows{first}")
    return Prepared(features, targets[kept], [rows[i].get(key_column) for i in kept], np.array(kept), len(rows),
                    skipped)


def split(data: Prepared, spec: DataSpec, seed: int, fractions: tuple[float, float, float] | None = None
          ) -> tuple[np.ndarray, ...]:
    """Train, validation and test positions into ``data``, by ``spec.split`` (cut in ``fractions``, default the
    spec's). A split the user gives (a file) and Matbench's folds are of the table's rows, so they are cut from
    every row and the unusable ones dropped after: a bad row leaves its set one short instead of reshuffling all."""
    fractions = fractions or spec.fractions
    if spec.split == "column":  # the keys are each usable row's set, read from the split column
        return column_split(data.keys, spec.split_column, data.rows)
    if spec.split == "file":
        parts = file_split(spec.split_file, data.n_rows, seed)
    elif spec.split == "matbench-kfold":
        parts = SPLITS[spec.split](list(range(data.n_rows)), fractions, seed)
    else:
        return SPLITS[spec.split](data.keys, fractions, seed)
    position = np.full(data.n_rows, -1)
    position[data.rows] = np.arange(len(data.rows))
    return tuple(position[part][position[part] >= 0] for part in parts)


def run_split(spec: TaskSpec, data: Prepared, fixed_test: bool) -> tuple[np.ndarray, ...]:
    """A training run's split of ``data``, by its seed. With a fixed test file (``fixed_test``) the rows give only
    training and validation, in the proportions of the first two fractions; with no test fraction, the rows
    rounding leaves over go to validation."""
    fractions = spec.data.fractions
    if fixed_test:
        fractions = (fractions[0] / sum(fractions[:2]), fractions[1] / sum(fractions[:2]), 0.0)
    train_idx, val_idx, test_idx = split(data, spec.data, spec.train.seed, fractions)
    if not fractions[2] and not fixed_test and spec.data.cut_by_fractions:
        val_idx, test_idx = np.concatenate([val_idx, test_idx]), test_idx[:0]
    if fixed_test and len(test_idx):
        raise ZooError(f"task {spec.name!r}: the test set is the fixed test file, but the {spec.data.split} "
                       f"split names {len(test_idx)} test rows of the training table; name only train and val")
    if len(train_idx) == 0 or len(val_idx) == 0:
        raise ZooError(f"task {spec.name!r}: {len(data.keys)} usable rows are too few to split {list(fractions)}")
    return train_idx, val_idx, test_idx


def saved_task(model: ZooModel | Ensemble) -> TaskSpec:
    """The task entry a loaded model was trained from: its saved model spec and its recorded provenance."""
    return validate_task({**model.provenance.get("task", {}),
                          **{k: v for k, v in model.spec.model_dump(mode="json").items() if k in MODEL_KEYS}})


def calibrate(model: ZooModel | Ensemble, folder: Path, rows: list[dict], data_sha256: str, workers: int = 0) -> None:
    """Give a loaded model saved in ``folder`` without a trust summary one (``zoo.trust``), from the table it was
    trained on: its split is drawn again from the seed its config.yaml records, so the summary sees the training
    and validation rows it would have seen at the end of training. The weights are not touched."""
    from zoo.artifacts import save_trust  # zoo.artifacts saves what this module trains

    recorded = model.provenance.get("data_sha256")
    if recorded and recorded != data_sha256:
        raise ZooError(f"{folder}: was trained on data with sha256 {recorded}; calibrate it on that table, not on "
                       f"one with sha256 {data_sha256}")
    task = saved_task(model)
    model.spec = task  # prepare and split read the task's data section, which the saved model spec leaves out
    data = prepare(model, rows, True, data_sha256, workers)  # the features cached by training, when there
    train_idx, val_idx, _ = run_split(task, data, bool(task.data.test_file))
    model.trust = fit_trust(model, data.features, data.targets, train_idx, val_idx, task.train.batch_size,
                            task.train.seed)
    if model.trust is None:
        raise ZooError(f"{folder}: a {task.head.type} head has no trust summary (it reads no pooled vector)")
    save_trust(model, Path(folder))


def fixed_test_set(spec: TaskSpec, path: str | Path | None) -> dict:
    """``fit``'s keyword arguments for a task's fixed test file (none when the task has no such file)."""
    if not path:
        return {}
    return {"test_rows": read_dataset(path, spec.data.test_reader or spec.data.reader), "test_sha256": sha256_file(path)}


def epoch_batches(sizes: np.ndarray, batch_size: int, seed: int, epoch: int, bucket: bool) -> list[np.ndarray]:
    """The training batches of one epoch, drawn from (seed, epoch) alone so a resumed run redraws them
    exactly. With ``bucket``: sorted by size within windows of 50 batches, then the batches shuffled."""
    generator = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    order = torch.randperm(len(sizes), generator=generator).numpy()
    if not bucket:
        return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    span, batches = batch_size * 50, []
    for start in range(0, len(order), span):
        chunk = order[start : start + span]
        chunk = chunk[np.argsort(sizes[chunk], kind="stable")]
        batches += [chunk[i : i + batch_size] for i in range(0, len(chunk), batch_size)]
    return [batches[b] for b in torch.randperm(len(batches), generator=generator).tolist()]


class _Batches(Dataset):
    """Featurized rows and their targets; item ``index`` (an array of positions) is those rows as one batch,
    collated by the model: (inputs, targets with 0 where missing, where targets are present)."""

    def __init__(self, model: ZooModel | Ensemble, data: Prepared):
        self.collate, self.features, self.targets = model.collate, data.features, data.targets

    def __len__(self) -> int:
        return len(self.features)

    def __getitem__(self, index: np.ndarray) -> tuple:
        y = torch.as_tensor(self.targets[index], dtype=torch.float32)
        return self.collate([self.features[i] for i in index]), torch.nan_to_num(y), ~torch.isnan(y)


class _Plan:
    """The batches (arrays of positions) the next pass of a ``BatchLoader`` fetches: its DataLoader's sampler,
    iterated in the main process, so which rows make a batch never depends on the workers."""

    def __init__(self):
        self.batches: list[np.ndarray] = []

    def __iter__(self):
        return iter(self.batches)

    def __len__(self) -> int:
        return len(self.batches)


class BatchLoader:
    """Collated batches of one ``Prepared``, in the order asked, through a ``torch.utils.data.DataLoader``: made in
    ``workers`` processes ahead of the model (kept between passes when ``persistent``; pinned for a CUDA
    ``device``), or here with none. ``loader(batches)`` is one pass: an iterator of (inputs, targets, mask)."""

    def __init__(self, model: ZooModel | Ensemble, data: Prepared, workers: int = 0,
                 device: torch.device = torch.device("cpu"), persistent: bool = True):
        self.plan = _Plan()
        # A generator of its own: a DataLoader draws a seed for its workers at every pass, and from the global
        # RNG that would shift the model's dropout from what a run with another worker count draws.
        self.loader = DataLoader(_Batches(model, data), sampler=self.plan, batch_size=None, collate_fn=_as_is,
                                 num_workers=workers, persistent_workers=persistent and workers > 0,
                                 pin_memory=device.type == "cuda", generator=torch.Generator())

    def __call__(self, batches: list[np.ndarray]):
        self.plan.batches = list(batches)
        return iter(self.loader)

    def close(self) -> None:
        """Stop the kept worker processes (they stop with the loader anyway; this is not left to the collector)."""
        iterator, self.loader._iterator = self.loader._iterator, None
        if iterator is not None and hasattr(iterator, "_shutdown_workers"):
            iterator._shutdown_workers()


class Evaluated(NamedTuple):
    pred: np.ndarray            # decoded outputs
    true: np.ndarray            # targets, NaN where missing
    pooled: np.ndarray          # the fused embeddings [N, dim]
    spread: np.ndarray | None   # the model's own spread of a regression's outputs (``zoo.trust.model_spread``)


def _lr_factor(step: int, warmup: int, total: int, final: float) -> float:
    if step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return final + (1 - final) * 0.5 * (1 + math.cos(math.pi * progress))


LOCK = ".train.lock"  # in the output folder while a run writes to it


def train_lock(out: Path):
    """Held on ``out`` by the run writing to it (its run.yaml, checkpoints, model), so a second run refuses."""
    return exclusive(Path(out) / LOCK, f"{out}: another training run is writing to this folder; wait for it to "
                                       "finish or train into another --out")


class Trainer:
    """Trains a task entry's model. ``device``: auto (the GPU when there is one, else the CPU; under torchrun each
    process's own GPU), cpu, cuda or cuda:N; a GPU asked for and not there is a ZooError. ``workers``: DataLoader
    processes that featurize the rows and collate the batches ahead of the model (``auto``: one per core; 0: in
    this process). Neither changes the result beyond float rounding of the device."""

    def __init__(self, spec: TaskSpec, out: Path | None = None, progress: bool = True,
                 device: str | torch.device = "auto", workers: int | str = 0):
        self.spec, self.out, self.progress = spec, Path(out) if out else None, progress
        self.metric = METRICS[spec.metric]
        self.device, self.workers = resolve_device(device), resolve_workers(workers)

    def _prepare(self, model: ZooModel, rows: list[dict], sha256: str | None) -> Prepared:
        data = prepare(model, rows, self.progress, sha256, self.workers)
        if data.skipped:
            shown = "; ".join(f"row {i}: {why}" for i, why in data.skipped[:5])
            print(f"skipped {len(data.skipped)} of {len(rows)} rows: {shown}"
                  f"{' ...' if len(data.skipped) > 5 else ''}", file=sys.stderr)
        return data

    def _param_groups(self, model: ZooModel) -> list[dict]:
        """The trainable parameters, with each input's own learning rate where the registry sets one."""
        lr_of = {f"encoders.{i.encoder}.": i.lr for i in self.spec.inputs.values() if i.lr is not None}
        groups: dict[float | None, list] = {}
        for name, p in model.named_parameters():
            if p.requires_grad:
                lr = next((lr for prefix, lr in lr_of.items() if name.startswith(prefix)), None)
                groups.setdefault(lr, []).append(p)
        return [{"params": ps} | ({"lr": lr} if lr is not None else {}) for lr, ps in groups.items()]

    def _loader(self, model: ZooModel | Ensemble, data: Prepared, persistent: bool = True) -> BatchLoader:
        return BatchLoader(model, data, self.workers, self.device, persistent)

    @torch.no_grad()
    def evaluate(self, model: ZooModel | Ensemble, data: Prepared, index: np.ndarray,
                 loader: BatchLoader | None = None) -> Evaluated:
        """Decoded predictions and targets (NaN where missing) for rows ``index``, in order, with the pooled
        embeddings and (a regression) the model's own spread, which the trust summary is fitted and checked on;
        the batches come from ``loader`` (one over ``data``), else from a loader made for this pass."""
        model.eval()
        preds, targets, pooled, spread = [], [], [], []
        size = self.spec.train.batch_size
        loader = loader or self._loader(model, data, persistent=False)
        for batch, y, mask in loader([index[start : start + size] for start in range(0, len(index), size)]):
            with self._autocast(model):
                raw, vectors, parts = model.run(to_device(batch, model.device))
                pred = model.head.decode(raw).float().cpu().numpy()
                spread.append(model_spread(model.head, raw, parts))
            if pred.ndim == 2 and pred.shape[1] < y.shape[1]:  # tags: a batch's rows end before the longest
                pred = np.pad(pred, ((0, 0), (0, y.shape[1] - pred.shape[1])), constant_values=np.nan)
            preds.append(pred)
            targets.append(np.where(mask.numpy(), y.numpy(), np.nan))
            pooled.append(vectors.float().cpu().numpy())
        return Evaluated(np.concatenate(preds), np.concatenate(targets), np.concatenate(pooled),
                         None if not spread or spread[0] is None else np.concatenate(spread))

    def _autocast(self, model: ZooModel):
        cuda = model.device.type == "cuda" and self.spec.train.bf16
        return torch.autocast("cuda", dtype=torch.bfloat16, enabled=cuda) if cuda else contextlib.nullcontext()

    def fit(self, rows: list[dict], data_sha256: str | None = None, test_rows: list[dict] | None = None,
            test_sha256: str | None = None, resume: bool = False) -> tuple[ZooModel, dict]:
        """Train on ``rows`` split by the registry; with ``test_rows`` (a fixed test set) ``rows`` give only
        training and validation, in the proportions of the first two fractions. ``resume`` continues from
        the checkpoint in ``out``. Under torchrun each rank trains on its share of every global batch (DDP);
        only rank 0 logs, checkpoints and saves, holding a lock on ``out`` so a second run into it refuses."""
        if not self.out or rank_and_world()[0]:
            return self._fit(rows, data_sha256, test_rows, test_sha256, resume)
        with train_lock(self.out):
            return self._fit(rows, data_sha256, test_rows, test_sha256, resume)

    def _fit(self, rows, data_sha256, test_rows, test_sha256, resume) -> tuple[ZooModel | Ensemble, dict]:
        spec, cfg = self.spec, self.spec.train
        rank, world = rank_and_world()
        seed_everything(cfg.seed)
        first = ZooModel(spec).to(self.device)
        # Wall time: this process's, plus (on resume) what the killed run had spent by its last checkpoint.
        self._started, self._before = time.perf_counter(), 0.0
        data = self._prepare(first, rows, data_sha256)
        train_idx, val_idx, test_idx = run_split(spec, data, test_rows is not None)
        test = data
        if test_rows is not None:
            test = self._prepare(first, test_rows, test_sha256)
            test_idx = np.arange(len(test.keys))
        members, runs = [], []
        for k in range(cfg.ensemble):  # an ensemble's members share the split; only their seeds differ
            if k:
                seed_everything(cfg.seed + k)
            member = first if k == 0 else ZooModel(spec).to(self.device)
            runs.append(self._train(member, k, data, train_idx, val_idx, data_sha256, resume,
                                    [r for run in runs for r in run["history"]]))
            members.append(member)
        model = members[0] if cfg.ensemble == 1 else Ensemble(members)

        per_member = lambda values: values[0] if cfg.ensemble == 1 else values
        metrics = {"best_epoch": per_member([r["best_epoch"] for r in runs]),
                   "epochs_run": per_member([len(r["history"]) for r in runs]),
                   "n_train": len(train_idx), "n_val": len(val_idx), "n_test": len(test_idx),
                   "skipped_rows": len(data.skipped), "world_size": world}
        if cfg.ensemble > 1:  # each member's own best validation score, beside the ensemble's below
            metrics["member_val"] = [{spec.metric: r["best"]} for r in runs]
        for part, source, index in (("val", data, val_idx), ("test", test, test_idx)):
            if len(index):
                pred, true, pooled, spread = self.evaluate(model, source, index)
                metrics[part] = {name: score(name, true, pred) for name in _family_metrics(spec)}
                metrics[f"{part}_predictions"] = {"rows": source.rows[index].tolist(), "true": true.tolist(),
                                                  "pred": pred.tolist()}
                if part == "val":  # the trust summary, from these validation outputs
                    model.trust = fit_trust(model, data.features, data.targets, train_idx, val_idx, cfg.batch_size,
                                            cfg.seed, val=(pred, pooled, spread))
                elif model.trust:  # and how far it holds on the test rows
                    metrics["test_calibration"] = calibration(model.trust, pred, pooled, spread, true,
                                                              [row_elements(test.features[i]) for i in test_idx])
        took = time.perf_counter() - self._started
        metrics["wall_s"] = round(self._before + took, 2)
        if resume:
            metrics["resumed_wall_s"] = round(took, 2)
        if self.out and rank == 0:
            save(model.cpu(), self.out, _without_predictions(metrics), data_sha256)
            # The rows of each set, as chemprop's splits file (so ``split: file`` reruns them), and what the model
            # predicted for each test row, by its row in the table it came from.
            given = {"train": train_idx, "val": val_idx} | ({} if test_rows is not None else {"test": test_idx})
            atomic_write_text(self.out / "splits.json", json.dumps([{k: data.rows[v].tolist() for k, v in given.items()}]))
            if "test_predictions" in metrics:
                _write_predictions(self.out / "test_predictions.csv", spec, metrics["test_predictions"])
        return model, metrics

    def _train(self, model: ZooModel, member: int, data: Prepared, train_idx: np.ndarray, val_idx: np.ndarray,
               data_sha256: str | None, resume: bool, logged: list[dict]) -> dict:
        """Train ``model`` (member ``member`` of the run: seeded ``seed + member``) and leave it holding its best
        validation state; returns the run's record (history, best epoch and value). An ensemble's members
        checkpoint into ``out/member-<k>``; ``logged`` is the earlier members' history, kept in the log."""
        spec, cfg = self.spec, self.spec.train
        rank, world = rank_and_world()
        seed = cfg.seed + member
        folder = self.out / f"member-{member}" if self.out and cfg.ensemble > 1 else self.out
        model.head.fit(data.targets[train_idx])
        # made after head.fit, so the copy holds the target scaling; buffers are averaged with the weights
        averaged = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(cfg.ema), use_buffers=True) if cfg.ema else None
        kept = averaged.module if averaged else model  # what is validated, kept as the best and saved
        sizes = np.array([feature_size(data.features[i]) for i in train_idx]) if cfg.bucket else np.zeros(len(train_idx))
        steps_per_epoch = math.ceil(len(train_idx) / cfg.batch_size)

        optimizer = torch.optim.AdamW(self._param_groups(model), lr=cfg.lr, weight_decay=cfg.weight_decay)
        total = cfg.epochs * steps_per_epoch
        warmup = max(1, int(cfg.warmup_epochs * steps_per_epoch))
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda step: _lr_factor(step, warmup, total, cfg.final_lr_ratio))
        # Where the run is: the epoch, the batches of it done, their losses, the early-stopping state, and
        # whether it is over (a finished member of an ensemble is not trained again on resume).
        run = {"epoch": 0, "batch": 0, "losses": [], "best": None, "best_epoch": -1, "history": [], "step": 0,
               "done": False}
        best_state = None
        # A run killed before its first checkpoint (or an ensemble member not started) begins afresh.
        if resume and folder and (folder / CHECKPOINT).is_file():
            ckpt = load_checkpoint(folder)
            if ckpt["spec"] != spec.model_dump(mode="json") or ckpt["data_sha256"] != data_sha256:
                raise ZooError(f"{self.out}: the checkpoint was made by another task entry or data file; "
                               "resume with the same ones, or train into a new --out")
            model.load_state_dict(ckpt["model"])
            optimizer.load_state_dict(ckpt["optimizer"])
            scheduler.load_state_dict(ckpt["scheduler"])
            best_state, run = ckpt["best_state"], ckpt["run"]
            self._before = max(self._before, run.get("wall_s", 0.0))  # members checkpoint one after another
            if averaged:
                averaged.load_state_dict(ckpt["ema"])
            set_rng_state(ckpt["rng"])
        trained = _ddp(model) if world > 1 else model

        def checkpoint() -> None:
            run["wall_s"] = self._before + time.perf_counter() - self._started
            if folder and rank == 0:
                save_checkpoint(folder, {
                    "spec": spec.model_dump(mode="json"), "data_sha256": data_sha256, "model": model.state_dict(),
                    "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                    "best_state": best_state, "run": run, "rng": rng_state(),
                    "ema": averaged.state_dict() if averaged else None})

        log = self.out / "metrics.jsonl" if self.out and rank == 0 else None
        if log:  # rewritten from the run's own history, so a resumed log has each epoch once
            folder.mkdir(parents=True, exist_ok=True)
            log.write_text("".join(json.dumps(r) + "\n" for r in logged + run["history"]))
        board = _tensorboard(folder) if log else None
        bar = tqdm(range(run["epoch"], run["epoch"] if run["done"] else cfg.epochs), unit="epoch",
                   desc=f"train {spec.name}" + (f" member {member}" if cfg.ensemble > 1 else ""),
                   disable=None if self.progress and rank == 0 else True)
        # One loader for the run: its workers (if any) live as long, and are stopped however it ends.
        with contextlib.closing(self._loader(model, data)) as loader:
            for epoch in bar:
                began = time.perf_counter()
                model.train()
                batches = epoch_batches(sizes, cfg.batch_size, seed, epoch, cfg.bucket)
                steps = []  # each step left in the epoch: (this rank's part of the global batch, its micro-batches)
                for b in range(run["batch"], len(batches)):
                    share = train_idx[batches[b][rank::world]]
                    steps.append((share, np.array_split(share, min(cfg.accumulate, len(share)))))
                parts = loader([part for _, micro in steps for part in micro])
                for b, (share, micro) in enumerate(steps, start=run["batch"]):
                    optimizer.zero_grad(set_to_none=True)
                    loss_sum = 0.0
                    for m, part in enumerate(micro):
                        batch, y, mask = next(parts)
                        sync = m == len(micro) - 1 or world == 1
                        with (contextlib.nullcontext() if sync else trained.no_sync()), self._autocast(model):
                            output = trained(to_device(batch, model.device))
                            loss = model.head.loss(output, to_device(y, model.device), to_device(mask, model.device))
                            loss = loss * len(part) / len(share)
                        loss.backward()
                        loss_sum += loss.item()
                    torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
                    optimizer.step()
                    scheduler.step()
                    if averaged:
                        averaged.update_parameters(model)
                    run["losses"].append(loss_sum)
                    run["batch"], run["step"] = b + 1, run["step"] + 1
                    if cfg.checkpoint_every and run["step"] % cfg.checkpoint_every == 0:
                        checkpoint()
                pred, true, _, _ = self.evaluate(kept, data, val_idx, loader)
                value = score(spec.metric, true, pred)
                record = {"epoch": epoch, "train_loss": float(np.mean(run["losses"])), f"val_{spec.metric}": value,
                          "lr": scheduler.get_last_lr()[0], **({"member": member} if cfg.ensemble > 1 else {}),
                          "epoch_s": round(time.perf_counter() - began, 3)}  # its training and validation
                run["history"].append(record)
                if log:
                    with open(log, "a") as f:
                        f.write(json.dumps(record) + "\n")
                if board:
                    for key, number in record.items():
                        if key not in ("epoch", "member"):
                            board.add_scalar(key, number, epoch)
                bar.set_postfix(loss=f"{record['train_loss']:.4f}", **{f"val_{spec.metric}": f"{value:.4f}"})
                better = run["best"] is None or (value > run["best"] if self.metric.higher_is_better
                                                 else value < run["best"])
                if better:
                    run["best"], run["best_epoch"] = value, epoch
                    best_state = {k: v.detach().clone() for k, v in kept.state_dict().items()}
                run.update(epoch=epoch + 1, batch=0, losses=[])
                checkpoint()
                if not better and epoch - run["best_epoch"] >= cfg.patience:
                    break
            if not run["done"]:
                run["done"] = True
                checkpoint()
        model.load_state_dict(best_state)
        if board:
            board.close()
        return run


def _tensorboard(out: Path):
    """A TensorBoard writer into ``out/tensorboard`` when tensorboard is installed (it is optional)."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        return None
    return SummaryWriter(str(out / "tensorboard"))


def _ddp(model: ZooModel) -> torch.nn.parallel.DistributedDataParallel:
    # Some parameters sit out some batches (a head that ignores the pooled vector, a modality a batch lacks).
    ids = [model.device.index] if model.device.type == "cuda" else None
    return torch.nn.parallel.DistributedDataParallel(model, device_ids=ids, find_unused_parameters=True)


def _family_metrics(spec: TaskSpec) -> tuple[str, ...]:
    """The metrics a task's validation and test sets are scored by: its head's (``Head.metrics``), in their order."""
    return spec.head.cls.metrics


def _write_predictions(path: Path, spec: TaskSpec, predictions: dict) -> None:
    """``row`` (each row's number in its table), then per target its true and predicted value; outputs that are
    not one number per target (classes' probabilities, tags) are written as JSON lists, ``true`` and ``pred``."""
    true, pred, targets = np.asarray(predictions["true"]), np.asarray(predictions["pred"]), list(spec.head.targets)
    per_target = true.ndim == pred.ndim == 2 and true.shape[1] == pred.shape[1] == len(targets)
    header = [c for t in targets for c in (t, f"{t}_pred")] if per_target else ["true", "pred"]

    def cells(t: np.ndarray, p: np.ndarray) -> list:
        if per_target:
            return [str(v) for pair in zip(t.astype(np.float32), p.astype(np.float32)) for v in pair]  # shortest
        return [json.dumps(v[~np.isnan(v)].tolist()) for v in (np.atleast_1d(t), np.atleast_1d(p))]

    def write(tmp: Path) -> None:
        with open(tmp, "w", newline="") as f:
            out = csv.writer(f)
            out.writerow(["row", *header])
            out.writerows([row, *cells(t, p)] for row, t, p in zip(predictions["rows"], true, pred))

    atomic_write(path, write)


def _without_predictions(metrics: dict) -> dict:
    return {k: v for k, v in metrics.items() if not k.endswith("_predictions")}
