"""Transformer encoder classifier: shapes for signals, images and tokens, parameter count, sinusoidal
positions by the formula, padding invariance, position sensitivity, and a few Trainer steps."""
import math

import pytest
import torch

from powertrain import models
from powertrain.data import DataMeta
from powertrain.models.transformer import sinusoidal_positions

TOKENS = {"vocab_size": 30, "input_dtype": torch.long, "pad_id": 0}


def encoder(shape, extra=None, **opts):
    torch.manual_seed(0)
    spec = {"name": "transformer", "d_model": 16, "n_head": 2, "n_layer": 2, **opts}
    return models.build(spec, DataMeta(shape, "multiclass", 5, extra=extra or {})).eval()


@pytest.mark.parametrize("shape,extra", [((1, 40), None), ((40,), None), ((1, 28, 28), None), ((12,), TOKENS)])
@pytest.mark.parametrize("pool", ["mean", "cls"])
@pytest.mark.parametrize("positions", ["sinusoidal", "learned"])
def test_shapes(shape, extra, pool, positions):
    net = encoder(shape, extra, pool=pool, positions=positions)
    x = torch.randint(1, 30, (3, *shape)) if extra else torch.randn(3, *shape)
    assert net(x).shape == (3, 5)


@pytest.mark.parametrize("pool,positions", [("mean", "sinusoidal"), ("cls", "learned")])
def test_param_count(pool, positions):
    d, L, C, T, K = 16, 2, 3, 40, 5
    net = encoder((C, T), pool=pool, positions=positions)
    block = 12 * d * d + 13 * d  # qkv 3d^2+3d, proj d^2+d, fc 4d^2+4d, proj 4d^2+d, two LayerNorms 4d
    expected = (C * d + d) + L * block + 2 * d + (d * K + K)  # input projection, blocks, ln_f, head
    if pool == "cls":
        expected += d  # the CLS token
    if positions == "learned":
        expected += (T + (pool == "cls")) * d
    assert models.count_params(net) == expected


def test_sinusoidal_positions_follow_the_formula():
    d = 6
    pe = sinusoidal_positions(10, d)
    for pos in (0, 3, 9):
        for i in range(d // 2):
            angle = pos / 10000 ** (2 * i / d)
            assert pe[pos, 2 * i].item() == pytest.approx(math.sin(angle), abs=1e-6)
            assert pe[pos, 2 * i + 1].item() == pytest.approx(math.cos(angle), abs=1e-6)
    assert sinusoidal_positions(4, 5).shape == (4, 5)  # odd widths work too


@pytest.mark.parametrize("pool", ["mean", "cls"])
def test_padding_at_the_end_changes_nothing(pool):
    long_net = encoder((9,), TOKENS, pool=pool, positions="learned")
    short_net = encoder((5,), TOKENS, pool=pool, positions="learned", max_len=9)
    short_net.load_state_dict(long_net.state_dict())
    short = torch.tensor([[4, 8, 15, 16, 23], [1, 2, 3, 4, 5]])
    padded = torch.cat([short, torch.zeros(2, 4, dtype=torch.long)], dim=1)
    torch.testing.assert_close(long_net(padded), short_net(short))
    unmasked = encoder((9,), {"vocab_size": 30, "input_dtype": torch.long}, pool=pool, positions="learned")
    unmasked.load_state_dict(long_net.state_dict())
    assert not torch.allclose(unmasked(padded), short_net(short))  # without the mask the pads would count


@pytest.mark.parametrize("patch,stride,tokens", [(1, None, 40), (4, None, 10), (4, 2, 19), (5, 3, 12)])
def test_patches_of_steps_become_tokens(patch, stride, tokens):
    net = encoder((2, 40), patch=patch, patch_stride=stride, positions="learned")
    assert net.wpe.num_embeddings == tokens
    seen = []
    net.blocks[0].register_forward_hook(lambda m, a, out: seen.append(out.shape))
    x = torch.randn(3, 2, 40)
    assert net(x).shape == (3, 5) and seen == [(3, tokens, 16)]
    # token t embeds steps [t*stride, t*stride + patch) of every channel: a Linear over that window
    s = stride or patch
    window = x[:, :, s : s + patch].flatten(1)  # token 1, channel-major as the conv weight
    expected = window @ net.proj.weight.flatten(1).T + net.proj.bias
    torch.testing.assert_close(net.proj(x)[:, :, 1], expected)


def test_positions_make_order_matter():
    x = torch.randn(2, 1, 10)
    net = encoder((1, 10))
    assert not torch.allclose(net(x), net(x.flip(-1)), atol=1e-4)
    net.pe.zero_()  # without positions, mean-pooled self-attention is permutation invariant
    torch.testing.assert_close(net(x), net(x.flip(-1)))


def test_trains_through_trainer(fit, make_bundle):
    torch.manual_seed(0)
    y = torch.randint(0, 2, (128,))
    x = torch.randn(128, 1, 16)
    x[:, 0, :8] += (2.0 * y - 1)[:, None]  # the class shows in the first half only
    data = make_bundle(x, y, "multiclass", 2)
    net = models.build({"name": "transformer", "d_model": 16, "n_head": 2, "n_layer": 1}, data.meta)
    before, after = fit(net, data, steps=40, lr=1e-2)
    assert after < 0.5 * before


def test_token_classification_trains_through_trainer(fit, make_bundle):
    torch.manual_seed(0)
    y = torch.randint(0, 2, (128,))
    x = torch.randint(3, 30, (128, 10))
    x[:, 2] = y + 1  # token 1 or 2 at position 2 carries the class
    data = make_bundle(x, y, "multiclass", 2, vocab_size=30, input_dtype=torch.long)
    net = models.build({"name": "transformer", "d_model": 16, "n_head": 2, "n_layer": 1, "pool": "cls"}, data.meta)
    before, after = fit(net, data, steps=40, lr=1e-2)
    assert after < 0.5 * before
