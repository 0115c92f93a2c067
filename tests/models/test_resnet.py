"""ResNet: shapes on 28x28 and 32x32, parameter count by hand, shortcuts and down-sampling where the
paper puts them, blocks that start as identities, and a few Trainer steps."""
import pytest
import torch
from torch import nn

from powertrain import models
from powertrain.data import DataMeta
from powertrain.models.resnet import BasicBlock


def hand_count(c_in: int, widths: list[int], blocks: list[int], classes: int, k: int = 9) -> int:
    """Conv weights (k taps: 9 for 3x3, 3 for 1-D; no biases), BN (gamma, beta) per conv, 1x1 projections
    where the shape changes, head."""
    total = k * c_in * widths[0] + 2 * widths[0]  # stem
    c = widths[0]
    for i, (w, n) in enumerate(zip(widths, blocks)):
        for j in range(n):
            stride = 2 if i > 0 and j == 0 else 1
            total += k * c * w + 2 * w + k * w * w + 2 * w
            if stride != 1 or c != w:
                total += c * w + 2 * w
            c = w
    return total + c * classes + classes


@pytest.mark.parametrize("shape", [(1, 28, 28), (3, 32, 32), (1, 40)])
@pytest.mark.parametrize("widths,blocks", [([8, 16], [1, 1]), ([16, 32, 64], [3, 3, 3])])
def test_shapes_and_param_count(shape, widths, blocks):
    net = models.build({"name": "resnet", "widths": widths, "blocks": blocks}, DataMeta(shape, "multiclass", 10))
    assert net(torch.randn(2, *shape)).shape == (2, 10)
    assert models.count_params(net) == hand_count(shape[0], widths, blocks, 10, k=3 ** (len(shape) - 1))


def test_resnet20_size_matches_the_paper():
    net = models.build({"name": "resnet", "widths": [16, 32, 64], "blocks": [3, 3, 3]}, DataMeta((3, 32, 32), "multiclass", 10))
    assert models.count_params(net) == pytest.approx(0.27e6, rel=0.02)  # He et al. 2016, table 6: 0.27M


def test_down_sampling_and_projection_shortcuts_where_expected():
    net = models.build({"name": "resnet", "widths": [8, 16, 32], "blocks": [2, 2, 2]}, DataMeta((1, 28, 28), "multiclass", 10))
    sizes = []
    for b in net.stages:
        b.register_forward_hook(lambda m, a, out: sizes.append(tuple(out.shape[1:])))
    net.eval()(torch.randn(2, 1, 28, 28))
    assert sizes == [(8, 28, 28)] * 2 + [(16, 14, 14)] * 2 + [(32, 7, 7)] * 2
    projections = [not isinstance(b.shortcut, nn.Identity) for b in net.stages]
    assert projections == [False, False, True, False, True, False]


def test_zero_init_residual_blocks_start_as_identity():
    torch.manual_seed(0)
    block = BasicBlock(8, 8, 1, two_d=True)
    nn.init.zeros_(block.bn2.weight)
    x = torch.rand(2, 8, 5, 5)  # non-negative, as after a ReLU
    torch.testing.assert_close(block.eval()(x), x)
    net = models.build({"name": "resnet", "widths": [8], "blocks": [2]}, DataMeta((1, 8, 8), "multiclass", 3))
    assert all(b.bn2.weight.abs().sum() == 0 for b in net.stages)
    net = models.build({"name": "resnet", "widths": [8], "blocks": [2], "zero_init_residual": False},
                       DataMeta((1, 8, 8), "multiclass", 3))
    assert all(b.bn2.weight.abs().sum() > 0 for b in net.stages)


def test_options_must_pair_widths_and_blocks():
    from powertrain.errors import RecipeError

    with pytest.raises(RecipeError, match="one of each per stage"):
        models.build({"name": "resnet", "widths": [8, 16], "blocks": [1]}, DataMeta((1, 8, 8), "multiclass", 3))


def test_trains_through_trainer(fit, make_bundle):
    torch.manual_seed(0)
    y = torch.randint(0, 2, (128,))
    x = torch.randn(128, 1, 8, 8) * 0.5
    x[y == 1, :, :4] += 1.0  # class 1: bright top half
    data = make_bundle(x, y, "multiclass", 2)
    net = models.build({"name": "resnet", "widths": [8, 16], "blocks": [1, 1]}, data.meta)
    before, after = fit(net, data, steps=30, lr=1e-2)
    assert after < 0.3 * before
