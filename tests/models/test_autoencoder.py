"""AutoEncoder and VAE: the documents' class reproduced exactly, parameter counts, the ELBO against a hand
computation, sampling, and a few Trainer steps each."""
import math

import pytest
import torch
import torch.nn as nn

from powertrain import models
from powertrain.data import DataMeta
from powertrain.models.check import ShapeError

SEED_AE = {"name": "autoencoder", "encoder": [128, 784], "code_activation": True, "output": "relu"}


class DocumentAutoEncoder(nn.Module):  # seed 001, as written
    def __init__(self, input_dim, encoding_dim, output_dim):
        super(DocumentAutoEncoder, self).__init__()
        self.encoder = nn.Sequential(
            nn.Linear(input_dim, encoding_dim),
            nn.ReLU(True),
            nn.Linear(encoding_dim, output_dim),
            nn.ReLU(True)
        )
        self.decoder = nn.Sequential(
            nn.Linear(output_dim, encoding_dim),
            nn.ReLU(True),
            nn.Linear(encoding_dim, input_dim),
            nn.ReLU(True)
        )

    def forward(self, x):
        x = self.encoder(x)
        x = self.decoder(x)
        return x


def test_documents_autoencoder_is_reproduced_layer_for_layer():
    ours = models.build(SEED_AE, DataMeta((1, 28, 28), "reconstruction"))
    doc = DocumentAutoEncoder(input_dim=784, encoding_dim=128, output_dim=784)
    assert models.count_params(ours) == models.count_params(doc) == 2 * (784 * 128 + 128 + 128 * 784 + 784)
    ours_linear = [m for m in ours.modules() if isinstance(m, nn.Linear)]
    doc_linear = [m for m in doc.modules() if isinstance(m, nn.Linear)]
    assert [(m.in_features, m.out_features) for m in ours_linear] == [(m.in_features, m.out_features) for m in doc_linear]
    for a, b in zip(ours_linear, doc_linear):
        a.load_state_dict(b.state_dict())
    x = torch.rand(5, 1, 28, 28)
    out = ours(x)
    assert out.shape == x.shape  # ours keeps the image shape ...
    torch.testing.assert_close(out.flatten(1), doc(x.flatten(1)))  # ... and computes the same function


@pytest.mark.parametrize("encoder,shape", [([64, 16], (1, 28, 28)), ([32], (20,)), ([100, 50, 8], (3, 8, 8))])
def test_autoencoder_shape_and_param_count(encoder, shape):
    net = models.build({"name": "autoencoder", "encoder": encoder, "output": "sigmoid"}, DataMeta(shape, "reconstruction"))
    n = math.prod(shape)
    widths = [n, *encoder, *reversed(encoder[:-1]), n]
    assert models.count_params(net) == sum(a * b + b for a, b in zip(widths[:-1], widths[1:]))
    x = torch.randn(4, *shape)
    out = net(x)
    assert out.shape == x.shape and 0 <= out.min() and out.max() <= 1
    assert net.encoder(x).shape == (4, encoder[-1])


def test_autoencoders_need_the_reconstruction_task():
    for name in ("autoencoder", "vae"):
        with pytest.raises(ShapeError, match="task 'reconstruction'"):
            models.build({"name": name}, DataMeta((1, 28, 28), "multiclass", 10))


# ---------------------------------------------------------------- VAE
def vae(shape=(3,), **opts):
    torch.manual_seed(0)
    return models.build({"name": "vae", "encoder": [8], "latent": 2, **opts}, DataMeta(shape, "reconstruction"))


FIXED = dict(
    x=[[0.0, 0.5, 1.0], [0.2, 0.9, 0.1]],
    recon=[[0.1, 0.4, 0.8], [0.3, 0.7, 0.2]],
    mu=[[0.5, -1.0], [0.0, 0.3]],
    logvar=[[0.0, -0.5], [0.2, 1.0]],
)


def hand_elbo(kind: str, beta: float) -> float:
    total = 0.0
    for x, r, mu, lv in zip(FIXED["x"], FIXED["recon"], FIXED["mu"], FIXED["logvar"]):
        if kind == "bce":
            nll = -sum(xi * math.log(ri) + (1 - xi) * math.log(1 - ri) for xi, ri in zip(x, r))
        else:
            nll = sum(0.5 * (ri - xi) ** 2 for xi, ri in zip(x, r))
        kl = sum(0.5 * (m * m + math.exp(v) - 1 - v) for m, v in zip(mu, lv))
        total += nll + beta * kl
    return total / len(FIXED["x"])


@pytest.mark.parametrize("kind,beta", [("bce", 1.0), ("mse", 1.0), ("bce", 0.5)])
def test_elbo_matches_hand_computation(kind, beta):
    net = vae(recon_loss=kind, beta=beta)
    t = {k: torch.tensor(v) for k, v in FIXED.items()}
    loss = net.compute_loss((t["x"], t["x"]), (t["recon"], t["mu"], t["logvar"]))
    assert loss.item() == pytest.approx(hand_elbo(kind, beta), rel=1e-6)


def test_vae_forward_sample_and_determinism():
    net = vae(shape=(1, 6, 6), encoder=[16], latent=3)
    x = torch.rand(4, 1, 6, 6)
    recon, mu, logvar = net(x)
    assert recon.shape == x.shape and mu.shape == logvar.shape == (4, 3)
    assert 0 <= recon.min() and recon.max() <= 1  # bce: sigmoid output
    assert net.sample(7).shape == (7, 1, 6, 6)
    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    torch.testing.assert_close(net.sample(2, generator=g1), net.sample(2, generator=g2))
    # training mode samples z: two passes differ; eval mode is repeatable and leaves the global RNG alone
    assert not torch.allclose(net(x)[0], net(x)[0])
    net.eval()
    state = torch.get_rng_state()
    torch.testing.assert_close(net(x)[0], net(x)[0])
    assert torch.equal(state, torch.get_rng_state())
    # z = mu + sigma * eps: with eps fixed by the eval generator, recompute by hand
    eps = torch.randn(4, 3, generator=torch.Generator().manual_seed(0))
    h = net.encoder(x)
    z = net.mu(h) + torch.exp(0.5 * net.logvar(h)) * eps
    torch.testing.assert_close(net(x)[0], net.decoder(z))
    torch.testing.assert_close(net.reconstruct(x), net.decoder(net.mu(h)))


def test_vae_bce_refuses_inputs_outside_unit_interval():
    net = vae()
    x = torch.randn(4, 3)
    with pytest.raises(ShapeError, match=r"needs inputs in \[0, 1\].*normalize: false"):
        net.compute_loss((x, x), net(x))


def test_autoencoder_trains_through_trainer(fit, make_bundle):
    torch.manual_seed(0)
    x = torch.randn(128, 2) @ torch.randn(2, 36)  # rank-2 data: a 4-wide code suffices
    x = x.reshape(128, 1, 6, 6)
    data = make_bundle(x, x, "reconstruction")
    net = models.build({"name": "autoencoder", "encoder": [32, 4]}, data.meta)
    before, after = fit(net, data, steps=60, lr=1e-2)
    assert after < 0.3 * before


def test_vae_trains_through_trainer(fit, make_bundle):
    torch.manual_seed(0)
    prototypes = torch.rand(4, 16).round()  # four binary patterns, each sample one of them
    x = prototypes[torch.randint(0, 4, (256,))]
    data = make_bundle(x, x, "reconstruction")
    net = models.build({"name": "vae", "encoder": [32], "latent": 2}, data.meta)
    before, after = fit(net, data, steps=60, lr=1e-2)
    assert before > 16 * math.log(2) * 0.8  # near-uniform Bernoulli at start: about 16 * ln 2 nats
    assert after < 0.5 * before
