"""One Trainer for every task: AdamW, linear warm-up then cosine decay, gradient clipping, early stopping on
the task's validation metric, seeded, with per-epoch metrics appended to ``metrics.jsonl``.

Single process here; the data loader and the model are built in one place each (``_loader``, ``fit``) so
distributed training can wrap them without touching the rest.
"""
from __future__ import annotations

import copy
import dataclasses
import json
import math
import random
import sys
import time
import typing
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from encoders import InputError, ZooError
from tasks import METRICS, SPLITS, score
from zoo.artifacts import save
from zoo.cache import cache_path, load_features, save_features
from zoo.model import ZooModel, to_device
from zoo.registry import TaskSpec


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


@dataclass
class Prepared:
    """Featurized rows with targets; ``skipped`` lists (row, reason) of rows that could not be used."""

    features: list[dict]
    targets: np.ndarray
    keys: list
    skipped: list[tuple[int, str]] = field(default_factory=list)


def feature_types(model: ZooModel) -> dict[str, type]:
    """The feature dataclass each input's encoder returns (its ``featurize`` return annotation)."""
    return {name: typing.get_type_hints(model.encoders[i.encoder].featurize)["return"]
            for name, i in model.spec.inputs.items()}


def prepare(model: ZooModel, rows: list[dict], progress: bool = True, data_sha256: str | None = None) -> Prepared:
    """Featurize every row with a target; with the data's sha256 the features are cached on disk."""
    spec = model.spec
    key_column = spec.data.split_key or next(iter(spec.inputs.values())).column
    needed = [i.column for i in spec.inputs.values()] + list(spec.head.targets.values())
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
        for i, row in enumerate(tqdm(rows, desc="featurize", unit="row", disable=None if progress else True,
                                     leave=False)):
            if np.isnan(targets[i]).all():
                skipped.append((i, f"no target in {', '.join(repr(c) for c in spec.head.targets.values())}"))
                continue
            try:
                features.append(model.featurize(row))
                kept.append(i)
            except InputError as err:
                skipped.append((i, str(err)))
        if cached and kept:
            save_features(cached, features, feature_types(model), {
                "kept": np.array(kept, dtype=np.int64), "skipped": np.array([i for i, _ in skipped], dtype=np.int64),
                "reasons": np.array([why for _, why in skipped], dtype=str)})
    if not kept:
        first = f" (row {skipped[0][0]}: {skipped[0][1]})" if skipped else ""
        raise ZooError(f"task {spec.name!r}: no usable training rows{first}")
    return Prepared(features, targets[kept], [rows[i].get(key_column) for i in kept], skipped)


def _size(features: dict) -> int:
    """A row's size for bucketing: the length of each present input's first feature array, summed."""
    return sum(len(np.atleast_1d(getattr(f, dataclasses.fields(f)[0].name)))
               for f in features.values() if f is not None)


class BucketSampler:
    """Shuffled batches of rows of similar size: shuffle, sort within windows of 50 batches, cut, shuffle
    the batches. Each epoch draws a new order from ``generator``."""

    def __init__(self, sizes: list[int], batch_size: int, generator: torch.Generator, window: int = 50):
        self.sizes, self.batch_size, self.generator, self.window = np.asarray(sizes), batch_size, generator, window

    def __len__(self) -> int:
        return math.ceil(len(self.sizes) / self.batch_size)

    def __iter__(self):
        order = torch.randperm(len(self.sizes), generator=self.generator).numpy()
        span = self.batch_size * self.window
        batches = []
        for start in range(0, len(order), span):
            chunk = order[start : start + span]
            chunk = chunk[np.argsort(self.sizes[chunk], kind="stable")]
            batches += [chunk[i : i + self.batch_size].tolist() for i in range(0, len(chunk), self.batch_size)]
        for b in torch.randperm(len(batches), generator=self.generator).tolist():
            yield batches[b]


def _lr_factor(step: int, warmup: int, total: int, final: float) -> float:
    if step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return final + (1 - final) * 0.5 * (1 + math.cos(math.pi * progress))


class Trainer:
    def __init__(self, spec: TaskSpec, out: Path | None = None, progress: bool = True):
        self.spec, self.out, self.progress = spec, Path(out) if out else None, progress
        self.metric = METRICS[spec.metric]

    def _prepare(self, model: ZooModel, rows: list[dict], sha256: str | None) -> Prepared:
        data = prepare(model, rows, self.progress, sha256)
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

    def _loader(self, data: Prepared, index: np.ndarray, model: ZooModel, shuffle: bool) -> DataLoader:
        items = [(data.features[i], data.targets[i]) for i in index]

        def collate(batch):
            y = torch.as_tensor(np.stack([t for _, t in batch]), dtype=torch.float32)
            return model.collate([f for f, _ in batch]), torch.nan_to_num(y), ~torch.isnan(y)

        generator = torch.Generator().manual_seed(self.spec.train.seed)
        if shuffle and self.spec.train.bucket:
            sampler = BucketSampler([_size(f) for f, _ in items], self.spec.train.batch_size, generator)
            return DataLoader(items, batch_sampler=sampler, collate_fn=collate)
        return DataLoader(items, batch_size=self.spec.train.batch_size, shuffle=shuffle, collate_fn=collate,
                          generator=generator)

    @torch.no_grad()
    def evaluate(self, model: ZooModel, loader: DataLoader) -> tuple[np.ndarray, np.ndarray]:
        model.eval()
        preds, targets = [], []
        for batch, y, mask in loader:
            pred = model.head.decode(model(to_device(batch, model.device))).float().cpu().numpy()
            if pred.ndim == 2 and pred.shape[1] < y.shape[1]:  # tags: a batch's rows end before the longest
                pred = np.pad(pred, ((0, 0), (0, y.shape[1] - pred.shape[1])), constant_values=np.nan)
            preds.append(pred)
            targets.append(np.where(mask.numpy(), y.numpy(), np.nan))
        return np.concatenate(preds), np.concatenate(targets)

    def fit(self, rows: list[dict], data_sha256: str | None = None, test_rows: list[dict] | None = None,
            test_sha256: str | None = None) -> tuple[ZooModel, dict]:
        """Train on ``rows`` split by the registry; with ``test_rows`` (a fixed test set) ``rows`` give only
        training and validation, in the proportions of the first two fractions."""
        spec, cfg = self.spec, self.spec.train
        seed_everything(cfg.seed)
        model = ZooModel(spec)
        started = time.perf_counter()
        data = self._prepare(model, rows, data_sha256)
        fractions = spec.data.fractions
        if test_rows is not None:
            fractions = (fractions[0] / sum(fractions[:2]), fractions[1] / sum(fractions[:2]), 0.0)
        train_idx, val_idx, test_idx = SPLITS[spec.data.split](data.keys, fractions, cfg.seed)
        if len(train_idx) == 0 or len(val_idx) == 0:
            raise ZooError(f"task {spec.name!r}: {len(data.keys)} usable rows are too few to split "
                           f"{list(fractions)}")
        test = data
        if test_rows is not None:
            test = self._prepare(model, test_rows, test_sha256)
            test_idx = np.arange(len(test.keys))
        model.head.fit(data.targets[train_idx])
        train_loader = self._loader(data, train_idx, model, shuffle=True)
        val_loader = self._loader(data, val_idx, model, shuffle=False)

        optimizer = torch.optim.AdamW(self._param_groups(model), lr=cfg.lr, weight_decay=cfg.weight_decay)
        total = cfg.epochs * len(train_loader)
        warmup = max(1, int(cfg.warmup_epochs * len(train_loader)))
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda step: _lr_factor(step, warmup, total, cfg.final_lr_ratio))

        best, best_state, best_epoch, history = None, None, -1, []
        log = self.out / "metrics.jsonl" if self.out else None
        if log:
            log.parent.mkdir(parents=True, exist_ok=True)
            log.write_text("")
        bar = tqdm(range(cfg.epochs), desc=f"train {spec.name}", unit="epoch",
                   disable=None if self.progress else True)
        for epoch in bar:
            model.train()
            losses = []
            for batch, y, mask in train_loader:
                loss = model.head.loss(model(to_device(batch, model.device)), y, mask)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
                optimizer.step()
                scheduler.step()
                losses.append(loss.item())
            pred, true = self.evaluate(model, val_loader)
            value = score(spec.metric, true, pred)
            record = {"epoch": epoch, "train_loss": float(np.mean(losses)), f"val_{spec.metric}": value,
                      "lr": scheduler.get_last_lr()[0]}
            history.append(record)
            if log:
                with open(log, "a") as f:
                    f.write(json.dumps(record) + "\n")
            bar.set_postfix(loss=f"{record['train_loss']:.4f}", **{f"val_{spec.metric}": f"{value:.4f}"})
            if best is None or (value > best if self.metric.higher_is_better else value < best):
                best, best_state, best_epoch = value, copy.deepcopy(model.state_dict()), epoch
            elif epoch - best_epoch >= cfg.patience:
                break
        model.load_state_dict(best_state)

        metrics = {"best_epoch": best_epoch, "epochs_run": len(history),
                   "n_train": len(train_idx), "n_val": len(val_idx), "n_test": len(test_idx),
                   "skipped_rows": len(data.skipped)}
        for part, source, index in (("val", data, val_idx), ("test", test, test_idx)):
            if len(index):
                pred, true = self.evaluate(model, self._loader(source, index, model, shuffle=False))
                metrics[part] = {name: score(name, true, pred) for name in _family_metrics(spec.metric)}
                metrics[f"{part}_predictions"] = {"true": true.tolist(), "pred": pred.tolist()}
        metrics["wall_s"] = round(time.perf_counter() - started, 2)
        if self.out:
            save(model, self.out, _without_predictions(metrics), data_sha256)
        return model, metrics


def _family_metrics(metric: str) -> tuple[str, ...]:
    families = {"roc_auc": ("roc_auc",), "entity_f1": ("entity_f1",),
                "mrr": ("mrr", "hits@1", "hits@10", "mrr_reverse")}
    return families.get(metric, ("rmse", "mae", "r2"))


def _without_predictions(metrics: dict) -> dict:
    return {k: v for k, v in metrics.items() if not k.endswith("_predictions")}
