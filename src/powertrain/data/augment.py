"""Batched augmentation of image tensors on their own device: random crop with zero padding,
horizontal flip, Gaussian noise. One call per batch, a few tensor ops, no per-sample Python loop.

Image datasets take `augment: {crop_padding: 4, hflip: true, noise_std: 0.0}` in their options and
hand the validated `AugmentOptions` to the trainer as `meta.augment`; the trainer applies
`augment_batch` to training batches only.

>>> import torch
>>> x = torch.arange(4.0).view(1, 1, 1, 4)
>>> hflip(x, p=1.0).flatten().tolist()
[3.0, 2.0, 1.0, 0.0]
>>> augment_batch(torch.zeros(8, 3, 32, 32), AugmentOptions(crop_padding=4, hflip=True)).shape
torch.Size([8, 3, 32, 32])

Random numbers come from `generator` when given, else from the default generator of the batch's
device, whose state the trainer checkpoints, so a resumed run draws the same crops and flips.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from pydantic import Field

from ..errors import RecipeError
from ..recipe.registry import Options


class AugmentOptions(Options):
    """`data.augment`: what to do to each training batch (all off by default)."""

    crop_padding: int = Field(0, ge=0)  # pad each side with zeros by this many pixels, crop back at a random offset
    hflip: bool = False  # mirror each image left-right with probability 1/2
    noise_std: float = Field(0.0, ge=0)  # add N(0, noise_std^2) to every value (units of the normalised input)

    @property
    def active(self) -> bool:
        return self.crop_padding > 0 or self.hflip or self.noise_std > 0


def check_augment(opts: Optional[AugmentOptions], input_shape: tuple) -> None:
    """Fail early (at build time, not at the first step) if `opts` cannot apply to samples of `input_shape`."""
    if opts is None or not opts.active:
        return
    if (opts.crop_padding or opts.hflip) and len(input_shape) != 3:
        raise RecipeError(f"data.augment: crop_padding and hflip need images of shape (C, H, W), but samples are "
                          f"{tuple(input_shape)}; remove them from data.augment")


def random_crop(x: torch.Tensor, padding: int, generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """Zero-pad each (C, H, W) image of the batch by `padding` pixels per side, then crop back to (H, W)
    at an offset drawn per sample, uniformly in [0, 2*padding] along each axis."""
    if padding == 0:
        return x
    n, c, h, w = x.shape
    padded = F.pad(x, (padding, padding, padding, padding))  # (N, C, H+2p, W+2p), zeros outside
    wp = w + 2 * padding
    dy = torch.randint(0, 2 * padding + 1, (n, 1, 1), device=x.device, generator=generator)
    dx = torch.randint(0, 2 * padding + 1, (n, 1, 1), device=x.device, generator=generator)
    rows = torch.arange(h, device=x.device).view(1, h, 1) + dy  # (N, H, 1)
    cols = torch.arange(w, device=x.device).view(1, 1, w) + dx  # (N, 1, W)
    index = (rows * wp + cols).view(n, 1, h * w).expand(n, c, h * w)  # flat positions in the padded image
    return padded.flatten(2).gather(2, index).view(n, c, h, w)


def hflip(x: torch.Tensor, p: float = 0.5, generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """Mirror each image of an (N, C, H, W) batch left-right with probability `p`."""
    flip = torch.rand(x.shape[0], device=x.device, generator=generator) < p
    return torch.where(flip.view(-1, 1, 1, 1), x.flip(-1), x)


def gaussian_noise(x: torch.Tensor, std: float, generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """x + N(0, std^2), elementwise."""
    if std == 0:
        return x
    noise = torch.randn(x.shape, device=x.device, dtype=x.dtype, generator=generator)
    return x + std * noise


def augment_batch(x: torch.Tensor, opts: Optional[AugmentOptions],
                  generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """Apply crop, then flip, then noise, as `opts` asks, to a float batch `x` (N, C, H, W); returns a new
    tensor of the same shape (or `x` itself when nothing is asked)."""
    if opts is None or not opts.active:
        return x
    if not x.is_floating_point():
        raise RecipeError(f"data.augment: inputs are {x.dtype}, augmentation needs float images; remove data.augment")
    if (opts.crop_padding or opts.hflip) and x.dim() != 4:
        raise RecipeError(f"data.augment: crop_padding and hflip need batches of shape (N, C, H, W), got "
                          f"{tuple(x.shape)}; remove them from data.augment")
    x = random_crop(x, opts.crop_padding, generator)
    if opts.hflip:
        x = hflip(x, 0.5, generator)
    return gaussian_noise(x, opts.noise_std, generator)
