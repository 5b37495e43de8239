"""Spectra: intensities on an axis (wavelength, m/z, ...) -> the encoder's fixed grid -> a 1D CNN -> one token per
segment of the grid, with a learned position embedding, so the fusion can attend to *where* a feature is.

A dense spectrum is linearly interpolated onto the grid; grid points outside its range are zero and marked
uncovered (the CNN sees coverage as a second channel, and segments with no coverage are masked). A peak list
(``mode: peaks``, e.g. MS/MS) is binned instead: each grid point sums the peaks within half a step of it.

Accepted inputs: a list or array of intensities already on the grid (exactly ``points`` long); intensities with
their axis, as ``{"axis": [...], "intensity": [...]}``, an [n, 2] array of (axis, intensity) pairs or JSON text
of either; or a path to a ``.npy``, ``.csv`` (one or two columns, an optional header) or FITS file (a 1-D image
HDU whose axis comes from CRVAL1/CDELT1/CRPIX1, or a table with wavelength and flux columns).
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from encoders.base import Fraction, InputError, PositiveInt, Tokens, input_file, register_encoder

FITS_SUFFIXES = (".fits", ".fit", ".fts", ".fits.gz")
# Table columns taken as the axis and the intensities (case-insensitive), first match wins.
AXIS_NAMES = ("wavelength", "wave", "lambda", "axis", "mz")
FLUX_NAMES = ("flux", "intensity", "reflectance", "counts")


@dataclass
class Spectrum:
    intensity: np.ndarray  # [points] float32 on the grid, normalised; 0 where not covered
    covered: np.ndarray    # [points] bool, True where the input reached the grid point

    @property
    def size(self) -> int:  # the grid's points (the same for every row of a task)
        return len(self.intensity)


def _numbers(values, what: str) -> np.ndarray:
    try:
        out = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError):
        raise InputError("spectrum", f"{what} are not all numbers") from None
    if out.size == 0:
        raise InputError("spectrum", f"no {what}")
    bad = np.flatnonzero(~np.isfinite(out.ravel()))
    if len(bad):
        raise InputError("spectrum", f"{what} hold NaN or inf (first at position {bad[0]})")
    return out


def _pairs(array: np.ndarray) -> tuple[np.ndarray | None, np.ndarray]:
    """A 1-D array is intensities alone; [n, 2] or [2, n] holds (axis, intensity)."""
    if array.ndim == 1:
        return None, array
    if array.ndim == 2 and 2 in array.shape:
        columns = array if array.shape[1] == 2 else array.T
        return columns[:, 0], columns[:, 1]
    raise InputError("spectrum", f"expected intensities or (axis, intensity) pairs, got shape {array.shape}")


def _to_unit(axis: np.ndarray, text: str | None, unit: str | None) -> np.ndarray:
    """The FITS axis in the grid's unit (Angstrom -> nm, or Hz -> nm through astropy's spectral equivalencies);
    as it is where the file or the encoder names no unit."""
    if not text or not unit:
        return axis
    from astropy import units as u

    try:
        return (axis * u.Unit(text)).to_value(unit, equivalencies=u.spectral())
    except (ValueError, u.UnitsError):
        raise InputError("spectrum", f"FITS axis unit {text!r} cannot be converted to the grid's {unit!r}") from None


def _read_fits(path: Path, unit: str | None) -> tuple[np.ndarray | None, np.ndarray]:
    from astropy.io import fits

    try:
        with fits.open(path, memmap=False) as hdus:
            for hdu in hdus:
                if isinstance(hdu, (fits.BinTableHDU, fits.TableHDU)):
                    names = {n.lower(): n for n in hdu.columns.names}
                    axis = next((names[n] for n in AXIS_NAMES if n in names), None)
                    flux = next((names[n] for n in FLUX_NAMES if n in names), None)
                    if axis and flux:  # one row per point, or one row holding both as arrays
                        x = _numbers(np.ravel(hdu.data[axis]), "axis values")
                        return _to_unit(x, hdu.columns[axis].unit, unit), np.ravel(hdu.data[flux])
                elif hdu.data is not None and np.squeeze(hdu.data).ndim == 1:
                    y, header = np.squeeze(hdu.data), hdu.header
                    if "CRVAL1" not in header:
                        return None, y
                    step = header.get("CDELT1", header.get("CD1_1", 1.0))  # FITS WCS, pixels counted from 1
                    x = header["CRVAL1"] + (np.arange(len(y)) + 1 - header.get("CRPIX1", 1.0)) * step
                    return _to_unit(x, header.get("CUNIT1"), unit), y
    except InputError:
        raise
    except (OSError, ValueError, TypeError) as err:  # a truncated file fails as any of these, in astropy or numpy
        raise InputError("spectrum", f"cannot read FITS file {path.name!r}: {str(err).splitlines()[0]}") from None
    raise InputError("spectrum", f"FITS file {path.name!r} has no 1-D spectrum HDU nor a table with "
                                 f"wavelength and flux columns")


def _read_csv(path: Path) -> np.ndarray:
    try:
        lines = [line for line in path.read_text().splitlines() if line.strip()]
    except UnicodeDecodeError as err:
        raise InputError("spectrum", f"{path.name!r} is not UTF-8 text ({err.reason} at byte {err.start})") from None
    try:
        float(lines[0].split(",")[0])
    except ValueError:
        lines = lines[1:]  # a first line that is not a number names the columns
    except IndexError:
        raise InputError("spectrum", f"{path.name!r} is empty") from None
    try:
        return np.loadtxt(lines, delimiter=",", ndmin=2).squeeze()
    except ValueError as err:
        raise InputError("spectrum", f"cannot read {path.name!r} as numbers: {str(err).splitlines()[0]}") from None


def read_spectrum(raw, unit: str | None = None) -> tuple[np.ndarray | None, np.ndarray]:
    """Any accepted input -> (axis or None, intensities), both as given (not yet checked or resampled)."""
    if isinstance(raw, dict):
        if "intensity" not in raw:
            raise InputError("spectrum", f"a spectrum dict needs 'intensity' (and 'axis'); got keys {sorted(raw)}")
        return raw.get("axis"), raw["intensity"]
    if isinstance(raw, (list, tuple, np.ndarray)):
        return _pairs(_numbers(raw, "values"))
    if not isinstance(raw, (str, Path)):
        raise InputError("spectrum", f"expected numbers, a dict, JSON text or a file path, got {type(raw).__name__}")
    text = str(raw).strip()
    if text.startswith(("[", "{")):
        try:
            parsed = json.loads(text)
        except (ValueError, RecursionError) as err:  # RecursionError: arrays nested thousands deep
            raise InputError("spectrum", f"cannot parse JSON: {str(err).splitlines()[0]}") from None
        return read_spectrum(parsed, unit)
    name = Path(text).name.lower()
    if not name.endswith((".npy", ".csv") + FITS_SUFFIXES):
        raise InputError("spectrum", f"{text[:60]!r} is neither a spectrum file (.npy, .csv, .fits) nor JSON numbers")
    path = input_file(text, "spectrum")
    if name.endswith(FITS_SUFFIXES):
        return _read_fits(path, unit)
    if name.endswith(".npy"):
        try:
            array = np.load(path, allow_pickle=False)
        except ValueError as err:
            raise InputError("spectrum", f"cannot read {path.name!r}: {str(err).splitlines()[0]}") from None
        return _pairs(_numbers(array, "values"))
    return _pairs(_read_csv(path))


@register_encoder("spectrum-cnn")
class SpectrumCNN(nn.Module):
    """A 1D CNN over a spectrum on a fixed grid of ``points`` from ``axis_min`` to ``axis_max`` (in ``unit``,
    which FITS axes are converted to); ``segments`` tokens out, each a stretch of the grid.

    ``normalize`` rescales each spectrum over its covered points: ``max`` by its largest |value|, ``area`` by its
    mean |value| (area per unit axis), ``snv`` to zero mean and unit variance; ``none`` keeps absolute levels.
    ``intensity: sqrt`` then takes the signed square root, which lifts small peaks against the base peak (as
    MS/MS spectral matching does: a fragment at 5% still counts).
    """

    out_dim: int  # the width of its tokens (the Encoder contract)

    def __init__(self, *, axis_min: float, axis_max: float, points: PositiveInt, unit: str | None = None,
                 mode: Literal["dense", "peaks"] = "dense", normalize: Literal["none", "max", "area", "snv"] = "none",
                 intensity: Literal["linear", "sqrt"] = "linear", channels: PositiveInt = 64, layers: PositiveInt = 4,
                 kernel: PositiveInt = 9, segments: PositiveInt = 16, dim: PositiveInt = 128, dropout: Fraction = 0.0):
        super().__init__()
        if points < segments or axis_max <= axis_min:
            raise ValueError(f"a grid of {points} points over [{axis_min}, {axis_max}] cannot make {segments} segments")
        self.grid = np.linspace(axis_min, axis_max, points)
        self.unit, self.mode, self.normalize, self.segments, self.out_dim = unit, mode, normalize, segments, dim
        self.intensity = intensity
        # Each block halves the resolution, so the receptive field grows to most of a broad absorption band.
        blocks, width = [], 2  # two input channels: intensity, and whether the input covered the point
        for _ in range(layers):
            blocks += [nn.Conv1d(width, channels, kernel, padding=kernel // 2), nn.BatchNorm1d(channels), nn.GELU(),
                       nn.MaxPool1d(2, ceil_mode=True)]
            width = channels
        self.cnn = nn.Sequential(*blocks)
        self.out = nn.Sequential(nn.Dropout(dropout), nn.Linear(channels, dim))
        self.position = nn.Parameter(torch.randn(segments, dim) * 0.02)

    def featurize(self, raw) -> Spectrum:
        axis, values = read_spectrum(raw, self.unit)
        values = _numbers(values, "intensities").ravel()
        if axis is None:
            if len(values) != len(self.grid):
                raise InputError("spectrum", f"wrong length: {len(values)} values but the grid has {len(self.grid)} "
                                             f"points; give an axis (axis + intensity) to resample it")
            intensity, covered = values, np.ones(len(self.grid), bool)
        else:
            axis = _numbers(axis, "axis values").ravel()
            if len(axis) != len(values):
                raise InputError("spectrum", f"{len(axis)} axis values but {len(values)} intensities")
            intensity, covered = self._resample(axis, values)
        intensity = self._normalise(intensity, covered)
        if self.intensity == "sqrt":
            intensity = np.sign(intensity) * np.sqrt(np.abs(intensity))
        with np.errstate(over="ignore"):  # past float32's range is inf, refused just below
            intensity = intensity.astype(np.float32)
        if not np.isfinite(intensity).all():
            raise InputError("spectrum", "intensities beyond the float32 range (about 3e38)")
        return Spectrum(intensity, covered)

    def _resample(self, axis: np.ndarray, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        grid, step = self.grid, self.grid[1] - self.grid[0]
        if self.mode == "peaks":
            edges = np.append(grid - step / 2, grid[-1] + step / 2)
            intensity = np.histogram(axis, bins=edges, weights=values)[0]
            if not ((axis >= edges[0]) & (axis <= edges[-1])).any():
                raise InputError("spectrum", f"no peak within the grid [{grid[0]:g}, {grid[-1]:g}]")
            return intensity, np.ones(len(grid), bool)
        order = np.argsort(axis, kind="stable")
        axis, values = axis[order], values[order]
        covered = (grid >= axis[0]) & (grid <= axis[-1])
        if not covered.any():
            raise InputError("spectrum", f"axis [{axis[0]:g}, {axis[-1]:g}] does not overlap the grid "
                                         f"[{grid[0]:g}, {grid[-1]:g}]{f' ({self.unit})' if self.unit else ''}")
        return np.where(covered, np.interp(grid, axis, values), 0.0), covered

    def _normalise(self, x: np.ndarray, covered: np.ndarray) -> np.ndarray:
        if self.normalize == "none":
            return x
        seen = x[covered]
        with np.errstate(over="ignore"):  # a scale that overflows is refused just below, in one line
            scale = {"max": np.abs(seen).max(), "area": np.abs(seen).mean(), "snv": seen.std()}[self.normalize]
        if scale == 0:
            raise InputError("spectrum", f"a flat spectrum cannot be normalised ({self.normalize})")
        if not np.isfinite(scale):
            raise InputError("spectrum", f"intensities too large to normalise ({self.normalize} overflows)")
        centre = seen.mean() if self.normalize == "snv" else 0.0
        return np.where(covered, (x - centre) / scale, 0.0)

    def collate(self, items: list[Spectrum | None]) -> dict:
        """Rows lacking a spectrum are all zeros and uncovered, so every one of their tokens is masked."""
        intensity = np.zeros((len(items), len(self.grid)), np.float32)
        covered = np.zeros((len(items), len(self.grid)), bool)
        for i, s in enumerate(items):
            if s is not None:
                intensity[i], covered[i] = s.intensity, s.covered
        return {"intensity": torch.as_tensor(intensity), "covered": torch.as_tensor(covered)}

    def forward(self, batch: dict) -> Tokens:
        covered = batch["covered"].float()
        present = batch["covered"].any(1)
        # Only rows with a spectrum go through the CNN, so batch statistics never see an absent row's zeros.
        x = covered.new_zeros(len(present), self.segments, self.out_dim)
        if present.any():
            h = self.cnn(torch.stack([batch["intensity"], covered], 1)[present])
            x[present] = self.out(F.adaptive_avg_pool1d(h, self.segments).transpose(1, 2)) + self.position
        mask = F.adaptive_max_pool1d(covered.unsqueeze(1), self.segments).squeeze(1) > 0  # any covered point
        return Tokens(x, mask)
