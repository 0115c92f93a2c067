"""Batched augmentation: each op does what it says, on hand-made tensors."""
import pytest
import torch
import torch.nn.functional as F

from powertrain.data.augment import AugmentOptions, augment_batch, check_augment, gaussian_noise, hflip, random_crop
from powertrain.errors import RecipeError


def numbered(n=64, c=2, h=5, w=6):
    """Distinct positive values everywhere, so every crop position is identifiable."""
    return torch.arange(1, n * c * h * w + 1, dtype=torch.float32).view(n, c, h, w)


def test_hflip_mirrors_exactly_the_chosen_images():
    x = numbered()
    assert torch.equal(hflip(x, p=1.0), x.flip(-1)) and torch.equal(hflip(x, p=0.0), x)
    out = hflip(x, p=0.5, generator=torch.Generator().manual_seed(0))
    flipped = [torch.equal(o, xi.flip(-1)) for o, xi in zip(out, x)]
    kept = [torch.equal(o, xi) for o, xi in zip(out, x)]
    assert all(f != k for f, k in zip(flipped, kept))  # each image either mirrored or untouched
    assert 16 < sum(flipped) < 48
    assert out[0, 0, 0].tolist() in (x[0, 0, 0].tolist(), x[0, 0, 0].flip(0).tolist())


def test_random_crop_is_a_shifted_window_of_the_zero_padded_image():
    x, p = numbered(), 2
    out = random_crop(x, p, generator=torch.Generator().manual_seed(1))
    assert out.shape == x.shape
    padded = F.pad(x, (p, p, p, p))
    seen = set()
    for i in range(len(x)):
        matches = [(dy, dx) for dy in range(2 * p + 1) for dx in range(2 * p + 1)
                   if torch.equal(out[i], padded[i, :, dy:dy + 5, dx:dx + 6])]
        assert len(matches) == 1  # exactly one offset, the same for all channels
        seen.add(matches[0])
    assert len(seen) > 15  # offsets vary per sample over the (2p+1)^2 choices
    centre = [i for i in range(len(x)) if torch.equal(out[i], x[i])]
    zeros = (out == 0).sum().item()
    assert zeros > 0 and all((out[i] != 0).all() for i in centre)  # zeros only come from the padding
    assert torch.equal(random_crop(x, 0), x)


def test_crop_one_pixel_by_hand():
    x = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]]]])  # (1, 1, 2, 2)
    results = {tuple(random_crop(x, 1, generator=torch.Generator().manual_seed(s)).flatten().tolist())
               for s in range(200)}
    expected = {(0, 0, 0, 1), (0, 0, 1, 2), (0, 0, 2, 0), (0, 1, 0, 3), (1, 2, 3, 4), (2, 0, 4, 0),
                (0, 3, 0, 0), (3, 4, 0, 0), (4, 0, 0, 0)}
    assert results == {tuple(float(v) for v in e) for e in expected}


def test_noise_has_the_asked_std_and_batch_is_reproducible():
    x = torch.zeros(512, 3, 8, 8)
    n = gaussian_noise(x, 0.5, generator=torch.Generator().manual_seed(0))
    assert n.std().item() == pytest.approx(0.5, rel=0.02) and abs(n.mean().item()) < 0.01
    opts = AugmentOptions(crop_padding=4, hflip=True, noise_std=0.1)
    a = augment_batch(torch.randn(8, 3, 32, 32, generator=torch.Generator().manual_seed(0)), opts,
                      generator=torch.Generator().manual_seed(5))
    b = augment_batch(torch.randn(8, 3, 32, 32, generator=torch.Generator().manual_seed(0)), opts,
                      generator=torch.Generator().manual_seed(5))
    assert a.shape == (8, 3, 32, 32) and torch.equal(a, b)
    torch.manual_seed(3)
    c = augment_batch(torch.ones(4, 1, 28, 28), AugmentOptions(crop_padding=4))
    torch.manual_seed(3)
    assert torch.equal(c, augment_batch(torch.ones(4, 1, 28, 28), AugmentOptions(crop_padding=4)))  # global RNG
    x = torch.ones(4, 3, 8, 8)
    assert augment_batch(x, None) is x and augment_batch(x, AugmentOptions()) is x


def test_wrong_inputs_are_recipe_errors():
    with pytest.raises(RecipeError, match="need images of shape"):
        check_augment(AugmentOptions(hflip=True), (1, 40))
    check_augment(AugmentOptions(noise_std=0.1), (1, 40))  # noise works on any float input
    with pytest.raises(RecipeError, match="need batches of shape"):
        augment_batch(torch.zeros(4, 1, 40), AugmentOptions(crop_padding=2))
    with pytest.raises(RecipeError, match="needs float images"):
        augment_batch(torch.zeros(4, 16, dtype=torch.long), AugmentOptions(noise_std=0.1))
    with pytest.raises(Exception):
        AugmentOptions(crop_padding=-1)
