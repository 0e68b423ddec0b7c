"""Drawing primitives for the toy cohorts (paper §5.3): H&E-like tissue, crosses and rings.

Everything works on float32 fields (H, W) and channel-first RGB canvases (3, H, W) with values
in 0..255, in level-0 pixels (0.5 µm/px, 20x). Drawing is vectorised with NumPy and
``scipy.ndimage``; the only Python loops run over drawn objects (a few hundred crosses, a few
rings), never over pixels.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

#: Colours (RGB, 0..255): slide glass, light and deep eosin stroma, haematoxylin nuclei.
GLASS = np.array([243.0, 243.0, 245.0], dtype=np.float32)
EOSIN_LIGHT = np.array([240.0, 196.0, 220.0], dtype=np.float32)
EOSIN_DEEP = np.array([222.0, 138.0, 182.0], dtype=np.float32)
HAEMATOXYLIN = np.array([88.0, 52.0, 132.0], dtype=np.float32)
#: Colour of a macro frame's band (near-black).
RING_DARK = np.array([46.0, 26.0, 64.0], dtype=np.float32)

#: Work resolution of the smooth fields (tissue outline, stroma texture, nuclear density).
_COARSE = 4


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, int], sigma) -> np.ndarray:
    """Gaussian-filtered white noise rescaled to zero mean and unit standard deviation."""
    field = ndimage.gaussian_filter(rng.standard_normal(shape, dtype=np.float32), sigma)
    return (field - field.mean()) / max(float(field.std()), 1e-6)


def _upsample(field: np.ndarray, factor: int) -> np.ndarray:
    """Bilinear upsampling of an (h, w) field by an integer ``factor`` to (h*factor, w*factor),
    pixel centres aligned (as ``grid_mode=True`` in scipy), edges clamped.

    Written as ``factor`` strided blends per axis: several times faster than ``ndimage.zoom``.
    """
    src = np.pad(field.astype(np.float32, copy=False), 1, mode="edge")  # (h+2, w+2)
    h, w = field.shape
    wide = np.empty((h + 2, w * factor), dtype=np.float32)  # columns first, on the small array
    out = np.empty((h * factor, w * factor), dtype=np.float32)
    for p in range(factor):
        t = np.float32(abs((p + 0.5) / factor - 0.5))  # distance from the source centre
        lo = p < factor / 2  # left half of the output pixel blends with the previous source
        near, far = src[:, 1:-1], (src[:, :-2] if lo else src[:, 2:])
        wide[:, p::factor] = near + t * (far - near)
    for p in range(factor):
        t = np.float32(abs((p + 0.5) / factor - 0.5))
        lo = p < factor / 2
        near, far = wide[1:-1], (wide[:-2] if lo else wide[2:])
        out[p::factor] = near + t * (far - near)
    return out


def disc_mask(
    shape: tuple[int, int], discs: list[tuple[float, float, float]], scale: float = 1.0
) -> np.ndarray:
    """Boolean (H, W) mask of the union of discs ``(cy, cx, radius)`` given in level-0 pixels;
    the mask's pixels are ``scale`` level-0 pixels wide (pixel centres sampled)."""
    mask = np.zeros(shape, dtype=bool)
    for cy, cx, radius in discs:
        y0, y1 = max(int((cy - radius) / scale), 0), min(int((cy + radius) / scale) + 1, shape[0])
        x0, x1 = max(int((cx - radius) / scale), 0), min(int((cx + radius) / scale) + 1, shape[1])
        if y0 >= y1 or x0 >= x1:
            continue
        yy = (np.arange(y0, y1, dtype=np.float32)[:, None] + 0.5) * scale - cy
        xx = (np.arange(x0, x1, dtype=np.float32)[None, :] + 0.5) * scale - cx
        mask[y0:y1, x0:x1] |= yy**2 + xx**2 <= radius**2
    return mask


def tissue_alpha(
    rng: np.random.Generator, size: int, coverage: float, anchors: list[tuple[float, float, float]]
) -> np.ndarray:
    """Tissue opacity (size, size) float32 in [0, 1]: one to a few irregular blobs.

    The blobs cover about ``coverage`` of the canvas, leave glass along the borders and
    always contain the ``anchors`` discs ``(cy, cx, radius)`` (where objects will be drawn).
    ``size`` must be a multiple of 4.
    """
    coarse = size // _COARSE
    lowres = -(-coarse // 12)
    field = _upsample(_smooth_noise(rng, (lowres, lowres), 2.0), 12)[:coarse, :coarse]
    r = (np.arange(coarse, dtype=np.float32) + 0.5) / coarse * 2.0 - 1.0
    field -= 2.2 * (r[:, None] ** 2 + r[None, :] ** 2)  # glass along the borders
    field[disc_mask(field.shape, anchors, scale=_COARSE)] = field.max() + 1.0
    band = max(coarse // 32, 2)  # a strip of bare glass all round, about 3% of the side
    low = field.min() - 1.0
    field[:band], field[-band:], field[:, :band], field[:, -band:] = low, low, low, low
    threshold = np.quantile(field, 1.0 - coverage)
    edge = 0.06 * float(field.std())  # a few coarse pixels of soft edge
    alpha = np.clip((field - threshold) / edge + 0.5, 0.0, 1.0)
    return _upsample(alpha, _COARSE)


def he_tissue(
    rng: np.random.Generator, alpha: np.ndarray, nuclei_per_mpx: float = 2600.0
) -> np.ndarray:
    """An H&E-like RGB canvas (3, H, W) float32: glass, and tissue where ``alpha`` is high.

    Stroma is eosin pink with a fibrous two-scale texture; nuclei are soft purple blobs about
    10 px (5 µm) across, their density varying smoothly over the slide (``nuclei_per_mpx`` per
    million tissue pixels on average); a faint per-pixel grain covers everything.
    """
    size = alpha.shape[0]
    coarse = size // _COARSE
    fine = _smooth_noise(rng, (coarse, coarse), (0.7, 2.5))
    broad = _smooth_noise(rng, (coarse, coarse), 10.0)
    stroma = _upsample(1.0 / (1.0 + np.exp(-(0.8 * fine + 0.7 * broad))), _COARSE)  # 0..1

    # Nuclei: weighted impulses on a half-resolution grid, blurred into blobs, soft-thresholded.
    half = size // 2
    density = np.exp(0.6 * _smooth_noise(rng, (coarse, coarse), 24.0))
    weights = (density * alpha[_COARSE // 2 :: _COARSE, _COARSE // 2 :: _COARSE]).ravel()
    n_nuclei = int(nuclei_per_mpx * float(alpha.sum()) / 1e6)
    cells = rng.choice(weights.size, size=n_nuclei, p=weights / weights.sum())
    step = _COARSE // 2
    ys = (cells // coarse) * step + rng.integers(0, step, n_nuclei)
    xs = (cells % coarse) * step + rng.integers(0, step, n_nuclei)
    impulses = np.zeros(half * half, dtype=np.float32)
    np.add.at(impulses, ys * half + xs, rng.uniform(0.6, 1.4, n_nuclei).astype(np.float32))
    sigma = 1.6  # half-resolution pixels
    blobs = ndimage.gaussian_filter(impulses.reshape(half, half), sigma, truncate=3.0)
    blobs *= np.float32(2 * np.pi * sigma**2)  # a lone impulse peaks at its weight
    nuclei = _upsample(blobs, 2)
    nuclei -= 0.35
    nuclei *= 2.5
    np.clip(nuclei, 0.0, 0.92, out=nuclei)

    # Every channel is one linear mix of five fields: glass, light and deep eosin, nuclei and
    # grain, so each strip of rows is a single (3, 5) @ (5, n) product.
    grain = rng.integers(-4, 5, (size, size), dtype=np.int8)  # uniform, sd 2.6
    mix_t = np.stack([GLASS, EOSIN_LIGHT, EOSIN_DEEP, HAEMATOXYLIN, np.ones(3, np.float32)]).T
    out = np.empty((3, size, size), dtype=np.float32)
    rows = max(1, 2**18 // size)  # strips of about 256k pixels stay in cache
    for r0 in range(0, size, rows):
        band = slice(r0, min(r0 + rows, size))
        a, n, st = alpha[band], nuclei[band], stroma[band]
        fields = np.empty((5,) + a.shape, dtype=np.float32)
        np.subtract(1.0, a, out=fields[0])
        stained = a * (1.0 - n)  # tissue not covered by nuclei
        np.multiply(stained, 1.0 - st, out=fields[1])
        np.multiply(stained, st, out=fields[2])
        np.multiply(a, n, out=fields[3])
        np.multiply(a, grain[band], out=fields[4])
        out[:, band] = (mix_t @ fields.reshape(5, -1)).reshape((3,) + a.shape)
    return out


# ---------------------------------------------------------------------------------------------
# Micro-anomaly: green-tinted crosses with a balancing rim
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CrossStyle:
    """Geometry of one micro-anomaly cross, in level-0 pixels.

    Four arms, each ``arm`` px long and ``core`` px thick, point away from a small open centre
    at right angles to one another, the whole turned by a random angle in ``angle`` (degrees
    from the pixel axes). The core is shifted by ``tint`` (RGB): green up, red and blue down,
    a hue no H&E stain makes (in eosin, haematoxylin and glass green is never the largest
    channel). Along both long sides of each arm runs a rim ``rim`` px wide shifted the other
    way (magenta), so every cross-section of an arm (rim, core, rim) leaves the mean colour
    unchanged: averaging over a few arm widths (the 8x and 16x area resize of the 10x and 5x
    patches) cancels the cross, while the 4x resize of a 20x patch keeps its green core. The
    arms stop short of the centre so their rims never overlap (an overlap would leave a dot
    that survives averaging), and the cross is turned off the pixel axes because a resize block
    whose edge runs along an arm cuts the balanced cross-section in two; a slanted arm is cut
    at an angle and still cancels.

    Sizes are set against the resize factors at the default 64 px patches: a 4 px core with
    2 px rims keeps about 0.8 of its shift through the 4x box of a 20x patch, but under 0.2
    through the 8x box of a 10x patch and under 0.05 through the 16x box of a 5x patch. An
    earlier white core (a shift toward white, balanced by a dark rim) survived as well but
    looked like glass next to dark nuclei, which H&E shows everywhere: encoders trained on
    these slides barely told it apart. Green is an object colour absent from H&E, so the
    scale separation rests on the balanced averaging alone, as intended. Short arms on a dense
    grid (``arm`` 8 px, ``spacing`` 48 px) put about four times as many green pixels in a 20x
    patch as 16 px arms 100 px apart; a linear probe on random-init ResNet-18 features of twin
    patches rose from 0.69 to 0.86 AUC at 20x and stayed at 0.50-0.53 at 10x and 5x.
    """

    arm: int = 8
    core: float = 4.0
    rim: float = 2.0
    angle: tuple[float, float] = (15.0, 75.0)
    tint: tuple[float, float, float] = (-30.0, 100.0, -30.0)
    spacing: int = 48  # mean distance between crosses in a positive region (jittered grid)
    supersample: int = 4  # sub-pixels per pixel side when rasterising the slanted cross

    @property
    def gap(self) -> float:
        """Distance from the centre to where each arm starts (its rims just miss the others)."""
        return self.core / 2 + self.rim

    @property
    def half(self) -> int:
        """Half the side of the kernel: the reach of the cross from its centre, any angle."""
        return int(np.ceil(np.hypot(self.gap + self.arm, self.core / 2 + self.rim))) + 1

    def kernel(self, theta: float) -> np.ndarray:
        """The cross turned by ``theta`` radians as a (K, K) float32 weight: the area fraction
        of each pixel under the core, minus the rim's, scaled so the whole sums to 0."""
        k, ss = 2 * self.half, self.supersample
        c = (np.arange(k * ss, dtype=np.float32) + 0.5) / ss - k / 2.0  # sub-pixel centres
        yy, xx = c[:, None], c[None, :]
        core = np.zeros((k * ss, k * ss), dtype=bool)
        rim = np.zeros_like(core)
        for turn in range(4):
            cos, sin = (
                np.float32(np.cos(theta + turn * np.pi / 2)),
                np.float32(np.sin(theta + turn * np.pi / 2)),
            )
            along, across = (
                np.abs(xx * cos + yy * sin - self.gap - self.arm / 2),
                np.abs(-xx * sin + yy * cos),
            )
            on_arm = along < self.arm / 2
            core |= on_arm & (across < self.core / 2)
            rim |= on_arm & (across >= self.core / 2) & (across < self.core / 2 + self.rim)
        cover = core.reshape(k, ss, k, ss).mean(axis=(1, 3))
        shade = rim.reshape(k, ss, k, ss).mean(axis=(1, 3))
        return (cover - shade * (cover.sum() / shade.sum())).astype(np.float32)


def jittered_grid(
    rng: np.random.Generator, cy: float, cx: float, radius: float, spacing: float, margin: float
) -> np.ndarray:
    """Points (N, 2) ``(y, x)`` on a randomly shifted, jittered square grid inside a disc."""
    n = int(np.ceil(2 * radius / spacing)) + 2
    offset = rng.uniform(0, spacing, 2)
    g = (np.arange(n) - n / 2) * spacing
    yy, xx = np.meshgrid(g + offset[0], g + offset[1], indexing="ij")
    pts = np.stack([yy.ravel(), xx.ravel()], axis=1)
    pts += rng.uniform(-0.25 * spacing, 0.25 * spacing, pts.shape)
    keep = np.hypot(pts[:, 0], pts[:, 1]) <= radius - margin
    return np.rint(pts[keep] + [cy, cx]).astype(int)


def draw_crosses(
    rgb: np.ndarray, centres: np.ndarray, thetas: np.ndarray, style: CrossStyle
) -> None:
    """Draw balanced tinted crosses at integer ``centres`` (N, 2) ``(y, x)``, turned by
    ``thetas`` (N,) radians, into ``rgb`` (3, H, W) float32, in place. Crosses that would leave
    the canvas are skipped.

    Each cross adds ``kernel * tint``: the core moves by ``tint``, the rims by as much the other
    way. (Clipping to 0..255 later trims a few rim pixels over the palest stroma or the darkest
    nuclei; the imbalance it leaves is far below what survives at 20x.)
    """
    tint = np.asarray(style.tint, dtype=np.float32)[:, None, None]
    h, w = rgb.shape[1:]
    for (cy, cx), theta in zip(centres, thetas, strict=True):
        kernel = style.kernel(float(theta))
        k = kernel.shape[0]
        y0, x0 = cy - k // 2, cx - k // 2
        if y0 < 0 or x0 < 0 or y0 + k > h or x0 + k > w:
            continue
        rgb[:, y0 : y0 + k, x0 : x0 + k] += tint * kernel


# ---------------------------------------------------------------------------------------------
# Macro-anomaly: rectangular frames (squares and oblong rectangles)
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RingStyle:
    """Geometry of a macro-anomaly ring (a rectangular frame), in level-0 pixels.

    A square frame has a side drawn uniformly from ``side``; an oblong frame has the same
    perimeter with sides in ratio ``aspect``. Both are turned by a random angle. The dark band
    is ``thickness`` px wide; the inside is left as tissue. The smallest inner width (the
    oblong's short side less two bands) exceeds the diagonal of a 256 px field, so no 20x field
    holds two opposite sides or two corners of one frame: a 20x field sees a straight piece of
    band or one right-angled corner, the same for both shapes, and only a field that holds the
    whole frame shows its aspect.
    """

    side: tuple[float, float] = (725.0, 775.0)
    aspect: float = 2.0
    thickness: float = 60.0

    def half_sizes(self, side: float, oblong: bool) -> tuple[float, float]:
        """Outer half-sides ``(a, b)``, ``a >= b``, of a frame of (square) side ``side``."""
        if not oblong:
            return side / 2, side / 2
        short = 2.0 * side / (1.0 + self.aspect)  # equal perimeter: 4 side = 2 short (1 + aspect)
        return self.aspect * short / 2, short / 2

    @property
    def max_extent(self) -> float:
        """Largest distance from a frame's centre to its outer edge (a corner)."""
        return max(float(np.hypot(*self.half_sizes(self.side[1], oblong))) for oblong in (0, 1))


def _box_distance(u: np.ndarray, v: np.ndarray, a: float, b: float) -> np.ndarray:
    """Signed distance to an axis-aligned box of half-sides ``a``, ``b`` (negative inside)."""
    qu, qv = np.abs(u) - a, np.abs(v) - b
    outside = np.hypot(np.maximum(qu, 0.0), np.maximum(qv, 0.0))
    return outside + np.minimum(np.maximum(qu, qv), 0.0)


def ring_layers(
    shape: tuple[int, int], cy: float, cx: float, a: float, b: float, theta: float, thickness: float
) -> tuple[np.ndarray, np.ndarray, tuple[slice, slice]]:
    """Band and inside opacities (float32 in [0, 1], anti-aliased) of a rectangular frame on its
    bounding box. ``a``, ``b`` are the outer half-sides, ``theta`` the angle of side ``a``
    (radians); the band is ``thickness`` px wide with sharp outer and inner corners."""
    ext = int(np.ceil(np.hypot(a, b))) + 2
    y0, y1 = max(int(cy) - ext, 0), min(int(cy) + ext + 1, shape[0])
    x0, x1 = max(int(cx) - ext, 0), min(int(cx) + ext + 1, shape[1])
    yy = np.arange(y0, y1, dtype=np.float32)[:, None] + 0.5 - cy
    xx = np.arange(x0, x1, dtype=np.float32)[None, :] + 0.5 - cx
    c, s = np.float32(np.cos(theta)), np.float32(np.sin(theta))
    u, v = xx * c + yy * s, -xx * s + yy * c
    filled = np.clip(0.5 - _box_distance(u, v, a, b), 0.0, 1.0)
    inside = np.clip(0.5 - _box_distance(u, v, a - thickness, b - thickness), 0.0, 1.0)
    box = (slice(y0, y1), slice(x0, x1))
    return (filled - inside).astype(np.float32), inside.astype(np.float32), box


def draw_ring(
    rgb: np.ndarray, cy: float, cx: float, a: float, b: float, theta: float, thickness: float
) -> tuple[slice, slice, np.ndarray]:
    """Draw one frame's dark band into ``rgb`` (3, H, W) float32 in place.

    Returns the bounding box and the filled-ring opacity on it (band or inside), for masks.
    """
    band, inside, (sy, sx) = ring_layers(rgb.shape[1:], cy, cx, a, b, theta, thickness)
    patch = rgb[:, sy, sx]
    patch += (0.92 * band) * (RING_DARK[:, None, None] - patch)  # a view: draws in place
    return sy, sx, np.maximum(band, inside)
