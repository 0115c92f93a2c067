"""Picture grids: the PNG's size follows the number of cells, each cell shows its picture in pixel units
(un-normalised), and run_figures writes what fits the model."""
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from powertrain import models
from powertrain.train import figures as visualize
from powertrain.data import DataBundle, DataMeta, TensorSplit
from powertrain.train.figures import CELL_IN, DPI, LABEL_IN, TITLE_IN


def png(path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB")).astype(int)


def centre(i: int, j: int, labels: bool = True) -> tuple[int, int]:
    """(row, column) in pixels of the centre of cell (i, j) of a grid with a title (and row labels)."""
    label = LABEL_IN if labels else 0.0
    y_in = TITLE_IN + i * (label + CELL_IN) + label + CELL_IN / 2
    return int(y_in * DPI), int((j + 0.5) * CELL_IN * DPI)


# ------------------------------------------------------------------ un-normalisation
def test_to_pixels_undoes_grayscale_standardisation_by_hand():
    # pixels 0, 0.25, 1 standardised with mean 0.5, std 0.25 are -2, -1, 2; 3 and -3 lie outside [0, 1]
    x = torch.tensor([-2.0, -1.0, 2.0, 3.0, -3.0]).view(5, 1, 1, 1)
    out = visualize._to_pixels(x, {"mean": [0.5], "std": [0.25]})
    assert out.shape == (5, 1, 1, 1)  # (N, H, W, C)
    assert out.flatten().tolist() == [0.0, 0.25, 1.0, 1.0, 0.0]  # 3 -> 1.25 and -3 -> -0.25 clipped


def test_to_pixels_undoes_per_channel_standardisation_by_hand():
    x = torch.tensor([1.0, -0.5, 0.25]).view(1, 3, 1, 1).expand(1, 3, 2, 2)
    out = visualize._to_pixels(x, {"mean": [0.1, 0.2, 0.3], "std": [0.5, 0.4, 2.0]})
    assert out.shape == (1, 2, 2, 3)
    # red 1 * 0.5 + 0.1 = 0.6, green -0.5 * 0.4 + 0.2 = 0.0, blue 0.25 * 2 + 0.3 = 0.8
    assert torch.allclose(out[0, 1, 0], torch.tensor([0.6, 0.0, 0.8]))


def test_to_pixels_lays_out_non_images_as_a_padded_square():
    # a 1-D signal of 40 steps: 7 x 7 cells, 9 of them padding; 0 standardised with mean 0.5, std 0.25 is 0.5
    out = visualize._to_pixels(torch.zeros(2, 1, 40), {"mean": [0.5], "std": [0.25]})
    assert out.shape == (2, 7, 7, 1)
    assert out.flatten(1).sum(1).tolist() == [20.0, 20.0] and out.flatten(1)[:, 40:].abs().sum() == 0


# ------------------------------------------------------------------ reconstruction grid
class Negate(nn.Module):
    def forward(self, x):
        return -x


def constant_images(values, normalization):
    """(N, 1, 6, 6) images, image k filled with pixel value values[k], standardised by `normalization`."""
    p = torch.tensor(values).view(-1, 1, 1, 1).expand(-1, 1, 6, 6)
    return (p - normalization["mean"][0]) / normalization["std"][0]


def test_reconstruction_grid_shows_inputs_over_outputs_in_pixel_units(tmp_path):
    norm = {"mean": [0.5], "std": [0.25]}
    values = [0.05 * k + 0.1 for k in range(12)]
    x = constant_images(values, norm)
    meta = DataMeta((1, 6, 6), "reconstruction", extra={"normalization": norm})
    bundle = DataBundle(TensorSplit(x, torch.zeros(12)), None, TensorSplit(x, torch.zeros(12)), meta)
    path = visualize.reconstruction_grid(Negate(), bundle, tmp_path / "r.png", n=10)
    img = png(path)
    # 10 cells across, two rows with a label each, and the title
    assert img.shape[:2] == (round((TITLE_IN + 2 * (LABEL_IN + CELL_IN)) * DPI), 10 * CELL_IN * DPI)
    for j in range(10):
        top, bottom = img[centre(0, j)], img[centre(1, j)]
        # top: the input in pixels; bottom: -x in standardised units is 1 - p in pixels (mean 0.5)
        assert abs(top - 255 * values[j]).max() <= 2, (j, top)
        assert abs(bottom - 255 * (1 - values[j])).max() <= 2, (j, bottom)


def test_reconstruction_grid_of_a_vae_decodes_the_posterior_mean(tmp_path, monkeypatch):
    torch.manual_seed(0)
    meta = DataMeta((1, 4, 4), "reconstruction")
    vae = models.build({"name": "vae", "encoder": [8], "latent": 2}, meta)
    x = torch.rand(5, 1, 4, 4)
    bundle = DataBundle(TensorSplit(x, torch.zeros(5)), None, TensorSplit(x, torch.zeros(5)), meta)
    seen = {}
    monkeypatch.setattr(visualize, "_save_grid", lambda rows, path, *a: seen.update(rows=rows) or path)
    visualize.reconstruction_grid(vae, bundle, tmp_path / "r.png", n=10)
    assert len(seen["rows"][0]) == 5  # n larger than the split: all of it
    mean_decoded = vae.decoder(vae.mu(vae.encoder(x)))  # decoded posterior mean, no noise
    assert torch.allclose(seen["rows"][1], mean_decoded.permute(0, 2, 3, 1))
    assert torch.allclose(seen["rows"][0], x.permute(0, 2, 3, 1))


# ------------------------------------------------------------------ samples
class FakeVAE(nn.Module):
    """sample(n) gives image k the value k / n (standardised units), and records the generator's first draw."""

    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.zeros(1))

    def sample(self, n, generator=None):
        self.draw = torch.rand(1, generator=generator).item()
        return (torch.arange(n, dtype=torch.float32) / n).view(n, 1, 1, 1).expand(n, 1, 5, 5).clone()


def test_sample_grid_rows_of_eight_un_normalised_and_seeded(tmp_path):
    fake = FakeVAE()
    path = visualize.sample_grid(fake, tmp_path / "s.png", n=20, seed=3, normalization={"mean": [0.2], "std": [0.5]})
    img = png(path)
    assert img.shape[:2] == (round((TITLE_IN + 3 * CELL_IN) * DPI), 8 * CELL_IN * DPI)  # 20 = 8 + 8 + 4 cells
    for k in range(20):
        i, j = divmod(k, 8)
        expected = 255 * (k / 20 * 0.5 + 0.2)  # x * std + mean
        assert abs(img[centre(i, j, labels=False)] - expected).max() <= 2, k
    assert (img[centre(2, 5, labels=False)] == 255).all()  # no 21st cell: background
    assert fake.draw == torch.rand(1, generator=torch.Generator().manual_seed(3)).item()


# ------------------------------------------------------------------ run_figures
def fake_trainer(model_cfg, task):
    torch.manual_seed(0)
    x = torch.rand(6, 1, 4, 4)
    meta = DataMeta((1, 4, 4), task, num_classes=2)
    bundle = DataBundle(TensorSplit(x, torch.zeros(6, dtype=torch.long)), None, TensorSplit(x, torch.zeros(6)), meta)
    return SimpleNamespace(model=models.build(model_cfg, meta), data=bundle)


@pytest.mark.parametrize("cfg,task,names", [
    ({"name": "autoencoder", "encoder": [4]}, "reconstruction", ["reconstructions.png"]),
    ({"name": "vae", "encoder": [8], "latent": 2}, "reconstruction", ["reconstructions.png", "samples.png"]),
    ({"name": "mlp", "hidden": [4]}, "multiclass", []),
])
def test_run_figures_writes_what_fits_the_model(tmp_path, cfg, task, names):
    written = visualize.run_figures(fake_trainer(cfg, task), tmp_path)
    assert [p.name for p in written] == names
    assert sorted(p.name for p in tmp_path.iterdir()) == names
    for p in written:
        assert Image.open(p).format == "PNG"
