"""Picture grids for autoencoders and VAEs, written as PNG files (matplotlib, no display needed).

>>> from powertrain import visualize
>>> visualize.reconstruction_grid(run.trainer.model, run.trainer.data, run.dir / "reconstructions.png")  # doctest: +SKIP
>>> visualize.sample_grid(vae, run.dir / "samples.png", normalization=bundle.meta.normalization)  # doctest: +SKIP
>>> visualize.run_figures(run.trainer, run.dir)  # both, as fits the model  # doctest: +SKIP

Images are shown in pixel units: a dataset that standardised them (`meta.normalization`,
per-channel mean and std in [0, 1] pixel units) is un-normalised with `x * std + mean`, then clipped
to [0, 1]. Samples that are not (C, H, W) images with C in {1, 3} are shown as the nearest square.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Optional

import torch
from torch import nn


def _to_pixels(x: torch.Tensor, normalization: Optional[dict]) -> torch.Tensor:
    """(N, *shape) float -> (N, H, W, C) in [0, 1] on the CPU, C in {1, 3}."""
    x = x.detach().float().cpu()
    if normalization:
        mean = torch.tensor(normalization["mean"], dtype=torch.float32)
        std = torch.tensor(normalization["std"], dtype=torch.float32)
        if x.dim() == 4 and len(mean) == x.shape[1]:  # per channel
            x = x * std.view(1, -1, 1, 1) + mean.view(1, -1, 1, 1)
        elif len(mean) == 1:
            x = x * std + mean
    if x.dim() == 4 and x.shape[1] in (1, 3):
        img = x.permute(0, 2, 3, 1)
    else:  # not an image: lay the values out as a square (padded with zeros)
        flat = x.flatten(1)
        side = math.ceil(math.sqrt(flat.shape[1]))
        img = torch.zeros(len(flat), side * side)
        img[:, : flat.shape[1]] = flat
        img = img.reshape(len(flat), side, side, 1)
    return img.clamp(0, 1)


CELL_IN, GAP_IN, LABEL_IN, TITLE_IN, DPI = 1.0, 0.06, 0.18, 0.35, 100  # the grid's geometry, in inches


def _save_grid(rows: list[torch.Tensor], path: str | Path, titles: Optional[list[str]] = None, title: str = "") -> Path:
    """Each row a (N, H, W, C) tensor in [0, 1]; one picture per CELL_IN-inch cell, no axes, a label
    above each row (`titles`) and a `title` on top; the layout is fixed, so cell (i, j) is centred
    at x = (j + 0.5) * CELL_IN, y = TITLE_IN + i * (LABEL_IN + CELL_IN) + LABEL_IN + CELL_IN / 2 inches
    from the top left (LABEL_IN and TITLE_IN count only when there are labels or a title)."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    n_rows, n_cols = len(rows), max(len(r) for r in rows)
    label_in, title_in = (LABEL_IN if titles else 0.0), (TITLE_IN if title else 0.0)
    w_in, h_in = n_cols * CELL_IN, title_in + n_rows * (label_in + CELL_IN)
    fig = plt.figure(figsize=(w_in, h_in), dpi=DPI)
    for i, row in enumerate(rows):
        top_in = title_in + i * (label_in + CELL_IN) + label_in  # top edge of the row's cells
        if titles:
            fig.text(GAP_IN / w_in, 1 - (top_in - label_in / 2) / h_in, titles[i], fontsize=7, va="center")
        for j in range(len(row)):
            box = (j * CELL_IN + GAP_IN / 2, h_in - top_in - CELL_IN + GAP_IN / 2, CELL_IN - GAP_IN, CELL_IN - GAP_IN)
            ax = fig.add_axes((box[0] / w_in, box[1] / h_in, box[2] / w_in, box[3] / h_in))
            ax.set_axis_off()
            img = row[j].numpy()
            ax.imshow(img[..., 0] if img.shape[-1] == 1 else img, cmap="gray", vmin=0, vmax=1,
                      interpolation="nearest")
    if title:
        fig.text(0.5, 1 - title_in / 2 / h_in, title, fontsize=9, ha="center", va="center")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
    return path


@torch.no_grad()
def reconstruction_grid(model: nn.Module, data, path: str | Path, n: int = 10, split: str = "test") -> Path:
    """Write a PNG of `n` samples of `split` (top row) over the model's reconstructions (bottom row).

    `data` is a DataBundle. A VAE reconstructs from the posterior mean (`model.reconstruct`), without
    sampling noise; any other model's output (its first element, if a tuple) is the reconstruction."""
    bundle_split = data.split(split) if data.test is not None or split != "test" else data.split("val")
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    x = next(bundle_split.batches(torch.arange(min(n, len(bundle_split))), n))[0].to(device)
    was_training = model.training
    model.eval()
    try:
        out = model.reconstruct(x) if hasattr(model, "reconstruct") else model(x)
    finally:
        model.train(was_training)
    out = out[0] if isinstance(out, (tuple, list)) else out
    norm = data.meta.normalization
    mse = float(((out.reshape(x.shape) - x) ** 2).mean())
    how = " (decoded posterior mean)" if hasattr(model, "reconstruct") else ""
    return _save_grid([_to_pixels(x, norm), _to_pixels(out.reshape(x.shape), norm)], path,
                      [f"input ({split} split)", f"reconstruction{how}"],
                      f"{type(model).__name__}: the first {len(x)} {split} inputs and their reconstructions; MSE over these: {mse:.4f}")


@torch.no_grad()
def sample_grid(vae: nn.Module, path: str | Path, n: int = 64, seed: int = 0,
                normalization: Optional[dict] = None) -> Path:
    """Write a PNG of `n` draws from the VAE's prior, decoded (`vae.sample(n, generator)`), in rows of 8 to 16."""
    device = next(vae.parameters()).device
    g = torch.Generator(device=device).manual_seed(seed)
    was_training = vae.training
    vae.eval()
    try:
        x = vae.sample(n, generator=g)
    finally:
        vae.train(was_training)
    pixels = _to_pixels(x, normalization)
    cols = min(16, max(8, math.ceil(math.sqrt(n))))
    rows = [pixels[i : i + cols] for i in range(0, n, cols)]
    return _save_grid(rows, path, title=f"{type(vae).__name__}: {n} samples from the prior N(0, I), seed {seed}")


def run_figures(trainer, run_dir: str | Path) -> list[Path]:
    """The figures that fit a finished run's model, written into `run_dir`: reconstructions.png for
    any reconstruction model, and samples.png for a model with `sample(n)` (a VAE). [] otherwise."""
    if trainer.data.meta.task != "reconstruction":
        return []
    run_dir = Path(run_dir)
    written = [reconstruction_grid(trainer.model, trainer.data, run_dir / "reconstructions.png")]
    if hasattr(trainer.model, "sample"):
        written.append(sample_grid(trainer.model, run_dir / "samples.png",
                                   normalization=trainer.data.meta.normalization))
    return written
