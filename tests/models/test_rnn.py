"""RNN classifier: input layouts (mnist1d's (C, L), (L, F), (L,), tokens), the summary against the raw
nn.GRU/LSTM outputs, padding invariance, parameter count, and a few Trainer steps."""
import pytest
import torch

from powertrain import models
from powertrain.data import DataMeta


def rnn(shape, extra=None, **opts):
    torch.manual_seed(0)
    return models.build({"name": "rnn", "hidden": 8, **opts}, DataMeta(shape, "multiclass", 4, extra=extra or {})).eval()


@pytest.mark.parametrize("cell", ["gru", "lstm"])
@pytest.mark.parametrize("bidirectional", [False, True])
@pytest.mark.parametrize("layers", [1, 2])
def test_param_count(cell, bidirectional, layers):
    net = rnn((1, 40), cell=cell, bidirectional=bidirectional, layers=layers)
    gates, D, H = (4 if cell == "lstm" else 3), (2 if bidirectional else 1), 8
    expected = 0
    for layer in range(layers):
        n_in = 1 if layer == 0 else D * H
        expected += D * gates * (H * n_in + H * H + 2 * H)  # W_ih, W_hh, b_ih, b_hh per direction
    expected += D * H * 4 + 4  # head
    assert models.count_params(net) == expected


def test_channels_first_is_transposed_into_a_sequence():
    torch.manual_seed(0)
    x = torch.randn(3, 2, 40)  # (B, C, L), as mnist1d with 2 channels
    first = rnn((2, 40))
    last = rnn((40, 2), channels_first=False)
    last.load_state_dict(first.state_dict())
    assert first.rnn.input_size == 2  # 2 features per step, 40 steps
    torch.testing.assert_close(first(x), last(x.transpose(1, 2)))
    # (L,) is a sequence of scalars: the same as (1, L)
    scalar = rnn((40,))
    scalar.load_state_dict(rnn((1, 40)).state_dict())
    torch.testing.assert_close(scalar(x[:, 0]), rnn((1, 40))(x[:, :1]))


@pytest.mark.parametrize("cell", ["gru", "lstm"])
@pytest.mark.parametrize("pool", ["last", "mean", "max", "flatten"])
def test_summary_matches_the_raw_recurrent_outputs(cell, pool):
    net = rnn((1, 12), cell=cell, bidirectional=True, layers=2, pool=pool)
    x = torch.randn(3, 1, 12)
    out, _ = net.rnn(x.transpose(1, 2))  # (B, L, 2H): forward states then backward states
    H = 8
    if pool == "last":  # forward direction ends at t = L-1, backward at t = 0
        summary = torch.cat([out[:, -1, :H], out[:, 0, H:]], dim=1)
    elif pool == "mean":
        summary = out.mean(1)
    elif pool == "flatten":  # step 0's [forward, backward], then step 1's, ...
        summary = torch.cat([out[:, t] for t in range(12)], dim=1)
    else:
        summary = out.max(1).values
    torch.testing.assert_close(net(x), net.head(summary))


@pytest.mark.parametrize("pool", ["last", "mean", "max"])
def test_padding_at_the_end_changes_nothing(pool):
    extra = {"vocab_size": 20, "input_dtype": torch.long, "pad_id": 0}
    padded_net = rnn((7,), extra, pool=pool, bidirectional=True, embed_dim=6)
    short_net = rnn((4,), extra, pool=pool, bidirectional=True, embed_dim=6)
    short_net.load_state_dict(padded_net.state_dict())
    short = torch.tensor([[5, 3, 7, 9], [2, 2, 4, 1]])
    padded = torch.cat([short, torch.zeros(2, 3, dtype=torch.long)], dim=1)
    torch.testing.assert_close(padded_net(padded), short_net(short))
    mixed = torch.tensor([[5, 3, 0, 0, 0, 0, 0], [5, 3, 7, 9, 0, 0, 0]])  # different lengths in one batch
    torch.testing.assert_close(padded_net(mixed)[0], short_net(short[:1, :2])[0], atol=1e-5, rtol=1e-5)
    without_pad = rnn((7,), {"vocab_size": 20, "input_dtype": torch.long}, pool=pool, bidirectional=True, embed_dim=6)
    without_pad.load_state_dict(padded_net.state_dict())
    assert not torch.allclose(without_pad(padded), short_net(short))  # unpacked, the pads would count


def test_mnist1d_papers_gru_size():
    # greydanus/mnist1d GRUBase: bidirectional GRU, hidden 6, Linear over all 40 steps' outputs -> 10
    net = models.build({"name": "rnn", "hidden": 6, "bidirectional": True, "pool": "flatten"}, DataMeta((1, 40), "multiclass", 10))
    assert models.count_params(net) == 2 * 3 * (6 * 1 + 6 * 6 + 2 * 6) + (2 * 6 * 40 * 10 + 10) == 5134


def test_image_rows_as_sequence():
    net = rnn((3, 28, 28))
    assert net.rnn.input_size == 3 * 28
    assert net(torch.randn(2, 3, 28, 28)).shape == (2, 4)


def test_trains_through_trainer(fit, make_bundle):
    torch.manual_seed(0)
    y = torch.randint(0, 2, (128,))
    x = torch.randn(128, 1, 20) + (2.0 * y - 1)[:, None, None]  # class 1 around +1, class 0 around -1
    data = make_bundle(x, y, "multiclass", 2)
    net = models.build({"name": "rnn", "cell": "gru", "hidden": 16}, data.meta)
    before, after = fit(net, data, steps=40, lr=2e-2)
    assert after < 0.5 * before
