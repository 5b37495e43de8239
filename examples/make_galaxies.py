"""Write the example galaxy images (examples/galaxies/) and their table (examples/galaxies.csv).

    python examples/make_galaxies.py

Drawn here, not observed: an elliptical (de Vaucouleurs profile, red), two two-armed spirals (exponential disk
with logarithmic arms, blue; one winding each way), an edge-on disk with a dust lane, and the same clockwise
spiral as a single-band FITS image (float32 counts with sky noise, as a survey would give it).
"""
from pathlib import Path

import numpy as np
from astropy.io import fits
from PIL import Image

HERE = Path(__file__).resolve().parent
SIZE = 128
RED, BLUE = np.array([1.0, 0.75, 0.5]), np.array([0.6, 0.8, 1.0])  # g, r, i weights as R, G, B


def grid(axis_ratio: float = 1.0, angle: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """Radius (in pixels, of the galaxy's own plane) and azimuth of every pixel about the centre."""
    y, x = np.mgrid[:SIZE, :SIZE] - (SIZE - 1) / 2
    c, s = np.cos(angle), np.sin(angle)
    u, v = c * x + s * y, (-s * x + c * y) / axis_ratio
    return np.hypot(u, v), np.arctan2(v, u)


def elliptical() -> np.ndarray:
    r, _ = grid(0.75, 0.5)
    return np.exp(-7.67 * ((r + 0.5) / 14) ** 0.25)[..., None] * RED * 300


def spiral(clockwise: bool) -> np.ndarray:
    r, phi = grid(0.85, 0.3)
    # Azimuth grows clockwise on screen (row 0 at the top), so arms whose azimuth grows outward turn clockwise.
    winding = 1 if clockwise else -1
    arms = np.cos(2 * (phi - winding * np.log(r + 1) / 0.35)) ** 8  # two logarithmic arms, pitch ~19 degrees
    disk = np.exp(-r / 9) * (0.35 + 0.65 * arms)
    bulge = np.exp(-r / 3)
    return disk[..., None] * BLUE + bulge[..., None] * RED


def edge_on() -> np.ndarray:
    r, phi = grid(0.2, -0.4)
    height = r * np.abs(np.sin(phi)) * 0.2  # distance from the mid-plane, in the image's pixels
    lane = 1 - 0.6 * np.exp(-((height / 1.5) ** 2)) * (r < 30)
    return (np.exp(-r / 10) * lane)[..., None] * (0.5 * RED + 0.5 * BLUE)


def png(light: np.ndarray, rng: np.random.Generator) -> Image.Image:
    """Light -> an 8-bit colour cutout: sky noise, then an asinh stretch as SDSS colour images use."""
    light = light + rng.normal(0, 0.004, light.shape)
    scaled = np.arcsinh(np.clip(light, 0, None) / 0.02) / np.arcsinh(1 / 0.02)
    return Image.fromarray((np.clip(scaled, 0, 1) * 255).round().astype(np.uint8))


def main() -> None:
    rng = np.random.default_rng(0)
    out = HERE / "galaxies"
    out.mkdir(exist_ok=True)
    images = {"elliptical": elliptical(), "spiral_clockwise": spiral(True),
              "spiral_anticlockwise": spiral(False), "edge_on": edge_on()}
    for name, light in images.items():
        png(light, rng).save(out / f"{name}.png", optimize=True)
    counts = 800 * images["spiral_clockwise"][..., 1] + rng.normal(100, 5, (SIZE, SIZE))  # r band, sky level 100
    fits.PrimaryHDU(counts.astype(np.float32)).writeto(out / "spiral_clockwise_r.fits", overwrite=True)
    rows = [(name, f"examples/galaxies/{name}.png") for name in images]
    rows.append(("spiral_clockwise (r band FITS)", "examples/galaxies/spiral_clockwise_r.fits"))
    (HERE / "galaxies.csv").write_text("name,image\n" + "".join(f"{n},{p}\n" for n, p in rows))


if __name__ == "__main__":
    main()
