"""How far to trust each prediction: a per-row sigma, conformal intervals or prediction sets, and whether the row
is in the model's applicability domain.

``fit_trust`` summarises a trained model on its own split, at the end of training (or, for a model trained before
this existed, by ``zoo calibrate``), into ``trust.safetensors`` beside the weights:

- the domain: up to ``REFERENCE_ROWS`` training rows' fused embeddings, standardised. A row's distance is its mean
  Euclidean distance to the ``K`` nearest of them; its ``domain_score`` is that over the 95th percentile of the
  validation rows' distances, so ``in_domain`` (score at most 1) holds for 95% of rows like the validation set's.
- regression: a raw spread per row and target (the model's own, ``model_spread``: a mean-variance head's
  predicted std, or with an ensemble the std of the members' mixture; a plain head's ensemble, its members' std
  where that fits the validation rows' errors better than the domain distance, ``own_spread_fits_better``; else
  that distance) and, for every validation row, its |error| over that spread. Their root mean square scales the
  spread into a ``sigma`` in the target's units; their quantile gives split-conformal intervals at any coverage asked
  (normalised conformal regression: Papadopoulos et al. 2011, Lei et al. 2018), with the finite-sample
  correction, so on exchangeable rows an interval at 0.9 holds at least 90% of true values.
- classification: each validation row's 1 - p(true class), whose quantile gives conformal prediction sets.
- the elements (atomic numbers) of the training rows, where the inputs know theirs (molecules, crystals,
  compositions): a row holding another is out of domain, and its ``unseen_elements`` name them.

Only heads that read the pooled vector (values, probabilities, classes) have a domain; tags and embeddings have
their own confidence (``margin`` of a ranking).
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import torch
from safetensors.numpy import load as load_numpy, save as save_numpy

from encoders import ZooError

FILE = "trust.safetensors"
REFERENCE_ROWS = 1000  # training embeddings kept; with 128 dimensions, 0.5 MB
K = 5                  # neighbours a domain distance averages over
DOMAIN_QUANTILE = 0.95
KINDS = ("values", "probabilities", "classes")  # heads fed by the pooled vector


class Trust:
    """A model's trust summary (see the module's docstring): ``columns`` names what ``describe`` adds to each
    row's output, ``describe`` computes it from a batch's decoded outputs, pooled embeddings and model spread."""

    def __init__(self, tensors: dict[str, np.ndarray], kind: str, names: list[str]):
        self.t, self.kind, self.names = tensors, kind, names  # names: the targets (values) or classes

    @property
    def tracks_elements(self) -> bool:
        return "elements" in self.t

    def columns(self, interval: float | None) -> dict[str, str]:
        """Added output column -> its type: float, bool or text (JSON of a list)."""
        out = {}
        if self.kind == "values":
            for name in self.names:
                out[f"{name}_sigma"] = "float"
                if interval:
                    out |= {f"{name}_low": "float", f"{name}_high": "float"}
        if self.kind == "classes" and interval:
            out["prediction_set"] = "text"
        return out | {"domain_score": "float", "in_domain": "bool"} | (
            {"unseen_elements": "text"} if self.tracks_elements else {})

    def distance(self, pooled: np.ndarray) -> np.ndarray:
        """Each row's mean distance to its K nearest training embeddings, per dimension (so widths compare). In
        torch, on its threads: numpy's BLAS threads between the model's batches slowed the model 2.5x (each pool
        spinning while the other works)."""
        z = torch.from_numpy(np.ascontiguousarray((pooled - self.t["center"]) / self.t["scale"], np.float32))
        reference = torch.from_numpy(np.ascontiguousarray(self.t["reference"], np.float32))
        nearest = torch.cdist(z, reference).topk(min(K, len(reference)), dim=1, largest=False).values
        return (nearest.mean(1) / math.sqrt(z.shape[1])).numpy()

    def spread(self, distance: np.ndarray, own: np.ndarray | None) -> np.ndarray:
        """The raw spread [B, targets] a regression row's sigma and interval scale: the model's ``own``
        (``model_spread``) for the targets whose summary chose it (``own_spread``; a summary saved before that
        choice existed used it wherever the model gave one), else the row's domain ``distance``; never below
        ``floor`` (a small share of the validation median)."""
        raw = np.repeat(distance[:, None], len(self.names), 1)
        if own is not None:
            raw = np.where(self.t.get("own_spread", np.ones(1)) > 0, own, raw)
        return np.maximum(raw, self.t["floor"])

    def max_coverage(self) -> float:
        """The highest coverage the validation scores calibrate: n / (n + 1) for the target with fewest."""
        n = int(np.min((~np.isnan(self.t["scores"])).sum(0)))
        return n / (n + 1)

    def quantile(self, interval: float) -> np.ndarray:
        """The conformal quantile [targets, or 1 for classes] of the validation scores for coverage ``interval``:
        the ceil((n + 1) * interval)-th smallest of each target's n scores (rows missing it are left out)."""
        if not 0 < interval < 1:
            raise ZooError(f"--interval {interval}: a coverage is between 0 and 1, e.g. 0.9")
        out = []
        for scores in self.t["scores"].T:
            scores = np.sort(scores[~np.isnan(scores)])
            rank = math.ceil((len(scores) + 1) * interval)
            if rank > len(scores):
                raise ZooError(f"--interval {interval}: {len(scores)} validation rows calibrate coverages up to "
                               f"{len(scores) / (len(scores) + 1):.3f}")
            out.append(scores[rank - 1])
        return np.array(out)

    def describe(self, decoded: np.ndarray, pooled: np.ndarray, own: np.ndarray | None,
                 interval: float | None, elements: list[frozenset | None] | None = None) -> list[dict]:
        """The trust columns of a batch (``columns``); ``own``: the model's spread (``model_spread``), if any;
        ``elements``: each row's atomic numbers (``row_elements``), where the summary tracks them: a row with one
        no training row had is out of domain whatever its score."""
        distance = self.distance(pooled)
        score = distance / self.t["threshold"][0]
        rows = [{"domain_score": float(s), "in_domain": bool(s <= 1)} for s in score]
        if self.tracks_elements and elements is not None:
            seen = set(self.t["elements"].astype(int).tolist())
            for row, held in zip(rows, elements):
                unseen = sorted(set(held or ()) - seen)
                row["unseen_elements"] = ", ".join(map(_symbol, unseen)) or None
                row["in_domain"] &= not unseen
        if self.kind == "values":
            spread = self.spread(distance, own)
            sigma = spread * self.t["sigma_scale"]
            half = spread * self.quantile(interval) if interval else None
            for i, row in enumerate(rows):
                for j, name in enumerate(self.names):
                    row[f"{name}_sigma"] = float(sigma[i, j])
                    if half is not None:
                        row[f"{name}_low"] = float(decoded[i, j] - half[i, j])
                        row[f"{name}_high"] = float(decoded[i, j] + half[i, j])
        if self.kind == "classes" and interval:
            cut = self.quantile(interval)[0]
            for row, p in zip(rows, decoded):  # every class whose 1 - p is within the calibrated quantile
                row["prediction_set"] = json.dumps([c for c, q in zip(self.names, p) if 1 - q <= cut])
        return rows

    def save(self, path: Path) -> None:
        from zoo.artifacts import atomic_write  # zoo.artifacts loads models, and with them this module

        tensors = {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in self.t.items()}
        atomic_write(path, lambda tmp: tmp.write_bytes(save_numpy(tensors)))

    @classmethod
    def read(cls, data: bytes, head, where: Path) -> "Trust":
        """A saved summary for a model with ``head`` (its kind and names come from the head, not the file)."""
        try:
            tensors = load_numpy(data)
        except Exception as err:  # a damaged file: say which, in one line
            raise ZooError(f"{where}: not a readable trust summary ({str(err).splitlines()[0]})") from None
        return cls(tensors, head.kind, _names(head))


def row_elements(features: dict) -> frozenset[int] | None:
    """The atomic numbers of a row's inputs whose features know theirs (``Features.elements``), or None."""
    found = [f.elements().tolist() for f in features.values() if f is not None and hasattr(f, "elements")]
    return frozenset().union(*found) if found else None


def _symbol(z: int) -> str:
    from rdkit import Chem

    return Chem.GetPeriodicTable().GetElementSymbol(z) if 0 < z <= 118 else f"Z={z}"


def _names(head) -> list[str]:
    return list(head.classes) if head.kind == "classes" else list(head.targets)


def model_spread(head, raw: torch.Tensor, parts: list[torch.Tensor] | None) -> np.ndarray | None:
    """The spread [B, targets] a regression model gives its own outputs, in the target's units: an ensemble's
    members' std, a mean-variance head's predicted std, or with both the std of the members' mixture (their
    mean variance plus the variance of their means: Lakshminarayanan et al. 2017); None when it gives none
    (one model of a plain head, or a head that is not a regression)."""
    if head.kind != "values":
        return None
    variance = getattr(head, "variance", lambda raw: None)
    if parts is None:
        own = variance(raw)
        return None if own is None else own.sqrt().float().cpu().numpy()
    total = torch.stack([head.decode(p) for p in parts]).var(0, unbiased=False)
    own = [variance(p) for p in parts]
    if own[0] is not None:
        total = total + torch.stack(own).mean(0)
    return total.sqrt().float().cpu().numpy()


@torch.no_grad()
def run_rows(model, features: list[dict], batch_size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Decoded outputs, pooled embeddings and the model's own spread (``model_spread``) of featurized rows."""
    from zoo.model import to_device

    model.eval()
    decoded, pooled, spread = [], [], []
    for start in range(0, len(features), batch_size):
        batch = to_device(model.collate(features[start : start + batch_size]), model.device)
        raw, vectors, parts = model.run(batch)
        decoded.append(model.head.decode(raw).float().cpu().numpy())
        pooled.append(vectors.float().cpu().numpy())
        spread.append(model_spread(model.head, raw, parts))
    return (np.concatenate(decoded), np.concatenate(pooled),
            None if spread[0] is None else np.concatenate(spread))


def fit_trust(model, features: list[dict], targets: np.ndarray, train_idx: np.ndarray, val_idx: np.ndarray,
              batch_size: int, seed: int = 0, val: tuple | None = None) -> Trust | None:
    """The trust summary of a trained model from its training and validation rows (None for a head without a
    pooled vector, or too few rows). ``val``: the validation rows' (decoded, pooled, spread) where the caller
    has just run them, else they are run here."""
    head = model.head
    if head.kind not in KINDS or len(val_idx) < 2:
        return None
    rng = np.random.default_rng(seed)
    kept = np.sort(rng.permutation(train_idx)[:REFERENCE_ROWS])
    _, train_pooled, _ = run_rows(model, [features[i] for i in kept], batch_size)
    decoded, pooled, spread = val or run_rows(model, [features[i] for i in val_idx], batch_size)
    center, scale = train_pooled.mean(0), train_pooled.std(0) + 1e-6
    names = _names(head)
    trust = Trust({"center": center, "scale": scale, "reference": (train_pooled - center) / scale,
                   "threshold": np.ones(1, np.float32), "floor": np.zeros(1, np.float32)}, head.kind, names)
    distance = trust.distance(pooled)
    trust.t["threshold"] = np.array([max(np.quantile(distance, DOMAIN_QUANTILE), 1e-6)], np.float32)
    held = [row_elements(features[i]) for i in train_idx]
    if any(h is not None for h in held):
        trust.t["elements"] = np.array(sorted(set().union(*(h for h in held if h))), np.float32)
    y = targets[val_idx]
    if head.kind == "values":
        errors = np.abs(y - decoded)  # NaN where a row lacks the target
        # a head's own variance when the entry asks for it (``uncertainty: mve``); an ensemble's spread, a by-product
        # of training for accuracy, only where it earns its place
        trust.t["own_spread"] = (np.ones(len(names), np.float32) if getattr(head, "mve", False)
                                 else own_spread_fits_better(errors, spread, distance))
        trust.t["floor"] = spread_floor(trust.spread(distance, spread))  # spread() while the floor is still 0
        scores = errors / trust.spread(distance, spread)
        trust.t["scores"] = scores
        trust.t["sigma_scale"] = np.sqrt(np.nanmean(scores ** 2, 0))
    elif head.kind == "classes":
        truth = y[:, 0]
        known = ~np.isnan(truth)
        trust.t["scores"] = (1 - decoded[known, truth[known].astype(int)])[:, None]
    trust.t = {k: np.asarray(v, np.float32) for k, v in trust.t.items()}  # as saved: a reload predicts the same
    return trust


def spread_floor(raw: np.ndarray) -> np.ndarray:
    """The least raw spread a summary lets a row have, per target: a small share of the validation median (so a
    row the model is sure of cannot get a zero-width interval)."""
    return 0.05 * np.median(raw, 0) + 1e-12


def own_spread_fits_better(errors: np.ndarray, own: np.ndarray | None, distance: np.ndarray) -> np.ndarray:
    """Per target, 1 where the model's own spread, scaled to unit RMS of |error| / sigma on the validation rows
    (as ``sigma_scale`` scales it), gives those rows' |errors| [rows, targets] a lower Gaussian negative
    log-likelihood (a proper score: it rewards ranking the errors and narrow sigmas alike) than their domain
    distance does, else 0. With sigma so scaled, that likelihood is the mean log sigma plus a constant. Two
    members' std, for one, is too noisy a spread to be worth the width it adds."""
    if own is None:
        return np.zeros(errors.shape[1], np.float32)

    def mean_log_sigma(errors: np.ndarray, spread: np.ndarray) -> float:
        spread = np.maximum(spread, spread_floor(spread))  # as the summary will floor it
        return float(np.log(np.sqrt(np.mean((errors / spread) ** 2))) + np.mean(np.log(spread)))

    chosen = []
    for j in range(errors.shape[1]):
        known = ~np.isnan(errors[:, j])
        chosen.append(mean_log_sigma(errors[known, j], own[known, j]) < mean_log_sigma(errors[known, j], distance[known]))
    return np.array(chosen, np.float32)


def calibration(trust: Trust, decoded: np.ndarray, pooled: np.ndarray, spread: np.ndarray | None,
                y: np.ndarray, elements: list[frozenset | None] | None = None, interval: float = 0.9) -> dict:
    """How well the summary's uncertainty holds on held-out rows (targets ``y``, NaN where missing).

    Regression, averaged over targets: Spearman rho between |error| and sigma, the miscalibration area (mean
    |observed - expected| coverage of central Gaussian intervals of sigma, at levels 0.01-0.99) with the curve,
    and the conformal interval's coverage and mean width at ``interval``. Classification: the expected
    calibration error of the top class (15 bins) and the conformal sets' coverage and mean size. Coverage needs
    enough validation rows for ``interval`` (``max_coverage``); with fewer it is left out."""
    from scipy.stats import norm, spearmanr

    if interval > trust.max_coverage():  # too few validation rows for it: sigma and domain are still scored
        interval = None
    rows = trust.describe(decoded, pooled, spread, interval, elements)
    out = {"in_domain": float(np.mean([r["in_domain"] for r in rows]))} | ({"interval": interval} if interval else {})
    if trust.kind == "values":
        levels = np.linspace(0.01, 0.99, 99)
        rho, area, cover, width, curve = [], [], [], [], []
        for j, name in enumerate(trust.names):
            known = ~np.isnan(y[:, j])
            err = np.abs(y[known, j] - decoded[known, j])
            sigma = np.array([r[f"{name}_sigma"] for r in rows])[known]
            observed = np.array([np.mean(err <= norm.ppf((1 + p) / 2) * sigma) for p in levels])
            rho.append(spearmanr(err, sigma).statistic)
            area.append(float(np.mean(np.abs(observed - levels))))
            curve.append(observed)
            if interval:
                low, high = (np.array([r[f"{name}_{s}"] for r in rows])[known] for s in ("low", "high"))
                cover.append(float(np.mean((y[known, j] >= low) & (y[known, j] <= high))))
                width.append(float(np.mean(high - low)))
        out |= {"spearman_abs_error_sigma": float(np.mean(rho)), "miscalibration_area": float(np.mean(area)),
                "curve": {"expected": levels.round(2).tolist(), "observed": np.mean(curve, 0).round(4).tolist()}}
        out |= {"coverage": float(np.mean(cover)), "mean_width": float(np.mean(width))} if interval else {}
    elif trust.kind == "classes":
        truth = y[:, 0]
        known = ~np.isnan(truth)
        p, t = decoded[known], truth[known].astype(int)
        confidence, correct = p.max(1), (p.argmax(1) == t)
        bins = np.minimum((confidence * 15).astype(int), 14)
        ece = sum(abs(correct[bins == b].mean() - confidence[bins == b].mean()) * np.mean(bins == b)
                  for b in range(15) if (bins == b).any())
        out["ece"] = float(ece)
        if interval:
            sets = [json.loads(r["prediction_set"]) for r, k in zip(rows, known) if k]
            out |= {"coverage": float(np.mean([trust.names[c] in s for c, s in zip(t, sets)])),
                    "mean_set_size": float(np.mean([len(s) for s in sets]))}
    return out
