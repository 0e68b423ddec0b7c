"""SimSiam augmentations applied to whole batches on the training device.

The recipe is the one of the authors' SimSiam code (official-implementation.md §3.1; SimSiam,
Chen & He 2021, §4 and appendix): RandomResizedCrop (area 0.2–1), horizontal flip, colour
jitter 0.4/0.4/0.4/0.1 with p=0.8, grayscale with p=0.2, Gaussian blur with p=0.5, ImageNet
normalisation. It is adapted to ``patch_px``: the blur kernel is ``patch_px // 20 * 2 + 1``
(25 at 256 px, as in the authors' code) and the blur σ range (0.1–2.0 px at 256 px) is scaled
by ``patch_px / 256`` unless given, so a patch is blurred by the same fraction of its width at
any patch size. Optional vertical flips and 90° rotations keep small patterns intact and suit
histology, which has no canonical orientation.

Every sample of a batch draws its own parameters (a torchvision v2 transform called on a batch
would share one draw across it), and all pixel work runs as batched tensor operations on the
batch's device: crop, resize, flips and rotations are one ``affine_grid``/``grid_sample``; the
blur is one grouped convolution. Parameters are drawn on the CPU from a seeded
``torch.Generator``, so a seed gives the same views on CPU and CUDA up to float rounding.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torchvision.transforms.v2 import functional as TF


@dataclass(frozen=True)
class AugmentConfig:
    """Settings of :class:`BatchAugment`; defaults are the authors' SimSiam recipe."""

    crop_min_scale: float = 0.2
    crop_ratio: tuple[float, float] = (3 / 4, 4 / 3)
    hflip: bool = True
    vflip: bool = False
    rot90: bool = False
    jitter: tuple[float, float, float, float] = (0.4, 0.4, 0.4, 0.1)
    jitter_p: float = 0.8
    grayscale_p: float = 0.2
    blur_p: float = 0.5
    blur_sigma: tuple[float, float] | None = None  # None: (0.1, 2.0) × patch_px / 256

    def __post_init__(self) -> None:
        if not 0 < self.crop_min_scale <= 1:
            raise ValueError(f"crop_min_scale must be in (0, 1], got {self.crop_min_scale}")
        ratio = tuple(float(r) for r in self.crop_ratio)
        if len(ratio) != 2 or not 0 < ratio[0] <= ratio[1]:
            raise ValueError(f"crop_ratio must be (low, high) with 0 < low <= high, got {ratio}")
        object.__setattr__(self, "crop_ratio", ratio)  # YAML gives a list
        for name in ("jitter_p", "grayscale_p", "blur_p"):
            p = getattr(self, name)
            if not 0 <= p <= 1:
                raise ValueError(f"{name} must be a probability in [0, 1], got {p}")
        b, c, s, h = self.jitter
        if min(b, c, s) < 0 or not 0 <= h <= 0.5:
            raise ValueError(f"jitter must be (b, c, s >= 0, 0 <= hue <= 0.5), got {self.jitter}")

    def to_dict(self) -> dict:
        """Plain-type dict (lists, floats, bools) for checkpoints and logs."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}


def blur_kernel_size(patch_px: int) -> int:
    """Odd Gaussian kernel width for ``patch_px`` (the authors' ``size // 20 * 2 + 1``), >= 3."""
    return max(3, patch_px // 20 * 2 + 1)


class BatchAugment:
    """Random SimSiam views of a uint8 batch (B, 3, P, P) → uint8 (B, 3, P, P), same device.

    ``generator`` (a CPU ``torch.Generator``) makes the draws reproducible.
    """

    def __init__(self, patch_px: int, config: AugmentConfig | None = None) -> None:
        self.patch_px = int(patch_px)
        self.config = config or AugmentConfig()
        self.kernel_size = blur_kernel_size(self.patch_px)
        self.sigma = self.config.blur_sigma or (
            0.1 * self.patch_px / 256,
            2.0 * self.patch_px / 256,
        )

    def __call__(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        if x.dtype != torch.uint8 or x.ndim != 4 or x.shape[1] != 3:
            raise ValueError(f"expected a uint8 batch (B, 3, P, P), got {x.dtype} {tuple(x.shape)}")
        g = generator
        b, dev = x.shape[0], x.device
        cfg = self.config

        def rand(*shape):  # uniform [0, 1) drawn on the CPU, moved to the batch's device
            return torch.rand(*shape, generator=g).to(dev)

        img = self._crop_flip_rotate(x.float().div_(255.0), g)  # (B, 3, P, P) in [0, 1]
        if cfg.jitter_p > 0 and any(cfg.jitter):
            img = self._jitter(img, torch.rand(b, generator=g) < cfg.jitter_p, g)
        if cfg.grayscale_p > 0:
            gray = TF.rgb_to_grayscale(img, num_output_channels=3)
            img = torch.where((rand(b) < cfg.grayscale_p)[:, None, None, None], gray, img)
        if cfg.blur_p > 0:
            img = self._blur(img, rand(b) < cfg.blur_p, g)
        return img.clamp_(0, 1).mul_(255).round_().to(torch.uint8)

    def _crop_flip_rotate(self, img: torch.Tensor, g) -> torch.Tensor:
        """RandomResizedCrop to the same size, flips and 90° turns in one grid_sample."""
        b, cfg = img.shape[0], self.config
        tries = 10  # as torchvision: up to 10 draws, else the whole patch
        area = torch.empty(b, tries).uniform_(cfg.crop_min_scale, 1.0, generator=g)
        lo, hi = math.log(cfg.crop_ratio[0]), math.log(cfg.crop_ratio[1])
        ratio = torch.exp(torch.empty(b, tries).uniform_(lo, hi, generator=g))
        w, h = torch.sqrt(area * ratio), torch.sqrt(area / ratio)  # fractions of the side
        ok = (w <= 1) & (h <= 1)
        first = torch.where(ok.any(1), ok.float().argmax(1), torch.full((b,), -1))
        pick = first.clamp(min=0)[:, None]
        w = torch.where(first >= 0, w.gather(1, pick)[:, 0], torch.ones(b))
        h = torch.where(first >= 0, h.gather(1, pick)[:, 0], torch.ones(b))
        cx = (torch.rand(b, generator=g) * (1 - w) + w / 2) * 2 - 1  # crop centre in [-1, 1]
        cy = (torch.rand(b, generator=g) * (1 - h) + h / 2) * 2 - 1
        sx = torch.where(torch.rand(b, generator=g) < 0.5, -1.0, 1.0) if cfg.hflip else 1.0
        sy = torch.where(torch.rand(b, generator=g) < 0.5, -1.0, 1.0) if cfg.vflip else 1.0
        turns = torch.randint(0, 4, (b,), generator=g) if cfg.rot90 else torch.zeros(b)
        cos = torch.cos(turns * math.pi / 2).round()
        sin = torch.sin(turns * math.pi / 2).round()
        # output grid → rotate → flip → scale to the crop → shift to its centre
        theta = torch.zeros(b, 2, 3)
        theta[:, 0, 0], theta[:, 0, 1] = w * sx * cos, -w * sx * sin
        theta[:, 1, 0], theta[:, 1, 1] = h * sy * sin, h * sy * cos
        theta[:, 0, 2], theta[:, 1, 2] = cx, cy
        grid = F.affine_grid(theta.to(img.device), list(img.shape), align_corners=False)
        return F.grid_sample(img, grid, mode="bilinear", padding_mode="border", align_corners=False)

    def _jitter(self, img: torch.Tensor, apply: torch.Tensor, g) -> torch.Tensor:
        """ColorJitter with per-sample factors, in a random order drawn once per batch.

        ``apply`` (B,) bool lives on the CPU, so no device value is read back here.
        """
        b = img.shape[0]
        bri, con, sat, hue = self.config.jitter

        def factor(spread: float, centre: float) -> torch.Tensor:
            f = torch.empty(b).uniform_(centre - spread, centre + spread, generator=g)
            f = f.clamp(min=0) if centre else f
            return torch.where(apply, f, torch.full((b,), centre)).to(img.device)

        fb, fc, fs, fh = factor(bri, 1.0), factor(con, 1.0), factor(sat, 1.0), factor(hue, 0.0)
        for op in torch.randperm(4, generator=g).tolist():
            if op == 0 and bri:
                img = (img * fb[:, None, None, None]).clamp_(0, 1)
            elif op == 1 and con:
                mean = TF.rgb_to_grayscale(img).mean(dim=(1, 2, 3), keepdim=True)  # (B, 1, 1, 1)
                img = _blend(img, mean, fc)
            elif op == 2 and sat:
                img = _blend(img, TF.rgb_to_grayscale(img), fs)
            elif op == 3 and hue:
                img = _shift_hue(img, fh)
        return img

    def _blur(self, img: torch.Tensor, apply: torch.Tensor, g) -> torch.Tensor:
        """Separable Gaussian blur with a per-sample σ, as one grouped convolution."""
        b, c, p, _ = img.shape
        k = self.kernel_size
        sigma = torch.empty(b).uniform_(*self.sigma, generator=g).to(img.device)
        r = torch.arange(k, device=img.device, dtype=img.dtype) - (k - 1) / 2
        kern = torch.exp(-0.5 * (r[None, :] / sigma[:, None]) ** 2)  # (B, k)
        kern = kern / kern.sum(1, keepdim=True)
        delta = (r == 0).to(img.dtype).expand(b, k)
        kern = torch.where(apply[:, None], kern, delta).repeat_interleave(c, 0)  # (B*3, k)
        x = F.pad(img.reshape(1, b * c, p, p), [k // 2] * 4, mode="reflect")
        x = F.conv2d(x, kern[:, None, None, :], groups=b * c)
        x = F.conv2d(x, kern[:, None, :, None], groups=b * c)
        return x.reshape(b, c, p, p)


def _blend(img: torch.Tensor, other: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """factor·img + (1 − factor)·other per sample, clamped to [0, 1]."""
    f = factor[:, None, None, None]
    return (f * img + (1 - f) * other).clamp_(0, 1)


def _shift_hue(img: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """Rotate the hue of RGB images in [0, 1] by ``shift`` (B,) turns (−0.5..0.5)."""
    r, g, b = img.unbind(1)
    maxc, _ = img.max(1)
    minc, _ = img.min(1)
    delta = maxc - minc
    safe = torch.where(delta > 0, delta, torch.ones_like(delta))
    h = torch.where(
        maxc == r,
        ((g - b) / safe) % 6,
        torch.where(maxc == g, (b - r) / safe + 2, (r - g) / safe + 4),
    )
    h = torch.where(delta > 0, h / 6, torch.zeros_like(h))
    h = (h + shift[:, None, None]) % 1.0
    s = torch.where(maxc > 0, delta / torch.where(maxc > 0, maxc, torch.ones_like(maxc)), maxc)
    v = maxc
    # HSV → RGB: channel n takes v − v·s·clamp(min(k, 4 − k), 0, 1), k = (n + 6h) mod 6
    out = []
    for n in (5.0, 3.0, 1.0):
        k = (n + h * 6) % 6
        out.append(v - v * s * torch.clamp(torch.minimum(k, 4 - k), 0, 1))
    return torch.stack(out, 1)
