"""AutoEncoder and variational autoencoder (VAE): dense encoder and mirrored decoder over flattened samples.

AutoEncoder:  x (B, *shape) -> flatten -> encoder widths ... -> code -> mirrored widths -> (B, *shape)
              Trained by the Trainer's `reconstruction` task: MSE(outputs, x).
VAE:          x -> encoder widths -> mu, logvar (B, latent);  z = mu + exp(logvar / 2) * eps, eps ~ N(0, I)
              z -> mirrored widths -> recon (B, *shape).  forward returns (recon, mu, logvar) and
              `compute_loss` is the negative ELBO per sample: reconstruction NLL + beta * KL(q(z|x) || N(0, I)).

The source documents' AutoEncoder (seed 001) is, layer for layer,

    encoder: Linear(784, 128) ReLU Linear(128, 784) ReLU     decoder: Linear(784, 128) ReLU Linear(128, 784) ReLU

that is `{name: autoencoder, encoder: [128, 784], code_activation: true, output: relu}` here. Its oddities:
its `output_dim` (784) is the *code* size, as large as the input, so the only bottleneck is the
128-wide hidden layer of each half; ReLU on the code can leave units dead at zero; ReLU on the output
cannot produce negative values, so standardised inputs (mean 0) are half out of its reach, and even for
[0, 1] pixels a sigmoid is the usual choice; and it takes flat (N, 784) vectors, where ours flattens
images and returns them in their input shape. Our default output is linear (right for any scaling);
`output: sigmoid` with `data.normalize: false` is the choice for [0, 1] images.

>>> from powertrain import models
>>> from powertrain.data import DataMeta
>>> meta = DataMeta((1, 28, 28), "reconstruction")
>>> ae = models.build({"name": "autoencoder", "encoder": [128, 784], "code_activation": True, "output": "relu"}, meta)
>>> models.count_params(ae)  # 2 * ((784*128 + 128) + (128*784 + 784)), as the documents' class
403232
>>> vae = models.build({"name": "vae", "encoder": [256], "latent": 8}, meta)
>>> vae.sample(4).shape
torch.Size([4, 1, 28, 28])
"""
from __future__ import annotations

import math
from typing import Literal, Optional

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from ..data.bundle import DataMeta
from ..recipe.registry import Options
from .registry import ACTIVATIONS, MODELS
from .check import ShapeError

Activation = Literal["relu", "gelu", "tanh", "sigmoid", "silu", "leaky_relu", "elu"]
OUTPUTS = {"linear": nn.Identity, "sigmoid": nn.Sigmoid, "relu": nn.ReLU}


def dense(widths: list[int], activation: str, last_activation: bool) -> list[nn.Module]:
    """Linear layers widths[0] -> ... -> widths[-1], each followed by the activation (the last one only if asked)."""
    layers: list[nn.Module] = []
    for i, (w_in, w_out) in enumerate(zip(widths[:-1], widths[1:])):
        layers.append(nn.Linear(w_in, w_out))
        if i < len(widths) - 2 or last_activation:
            layers.append(ACTIVATIONS[activation]())
    return layers


def check_task(name: str, meta: DataMeta) -> int:
    """The flattened input size; the task must be reconstruction."""
    if meta.task != "reconstruction":
        raise ShapeError(f"{name}: the decoder's output reconstructs the input, which needs task 'reconstruction', "
                         f"but the data's task is '{meta.task}'; build the dataset with task reconstruction")
    return math.prod(meta.input_shape)


# ---------------------------------------------------------------- AutoEncoder
class AutoEncoderOptions(Options):
    encoder: list[int] = Field([128, 32], min_length=1)  # widths of the encoder's layers; the last is the code size
    activation: Activation = "relu"
    code_activation: bool = False  # also apply the activation to the code (the documents' model does)
    output: Literal["linear", "sigmoid", "relu"] = "linear"  # sigmoid: inputs in [0, 1]; relu: the documents' choice


class AutoEncoder(nn.Module):
    def __init__(self, opts: AutoEncoderOptions, input_shape: tuple[int, ...]):
        super().__init__()
        n_in = math.prod(input_shape)
        code, hidden = opts.encoder[-1], opts.encoder[:-1]
        self.encoder = nn.Sequential(nn.Flatten(), *dense([n_in, *opts.encoder], opts.activation, opts.code_activation))
        self.decoder = nn.Sequential(*dense([code, *reversed(hidden), n_in], opts.activation, False),
                                     OUTPUTS[opts.output](), nn.Unflatten(1, tuple(input_shape)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, *shape) -> code (B, encoder[-1]) -> (B, *shape)
        return self.decoder(self.encoder(x))


@MODELS.register("autoencoder", AutoEncoderOptions)
def build_autoencoder(opts: AutoEncoderOptions, meta: DataMeta) -> nn.Module:
    """Dense autoencoder with a mirrored decoder; output in the input's shape."""
    check_task("autoencoder", meta)
    return AutoEncoder(opts, tuple(meta.input_shape))


# ---------------------------------------------------------------- VAE
class VAEOptions(Options):
    encoder: list[int] = [512]  # hidden widths of the encoder; the decoder mirrors them
    latent: int = Field(16, ge=1)  # size of z
    activation: Activation = "relu"
    recon_loss: Literal["bce", "mse"] = "bce"  # bce: Bernoulli decoder, sigmoid output, inputs in [0, 1];
    #                                           mse: Gaussian decoder (unit variance), linear output, any scaling
    beta: float = Field(1.0, gt=0)  # weight of the KL term: 1 is the ELBO, other values a beta-VAE


class VAE(nn.Module):
    def __init__(self, opts: VAEOptions, input_shape: tuple[int, ...]):
        super().__init__()
        n_in = math.prod(input_shape)
        self.input_shape, self.latent, self.recon_loss, self.beta = tuple(input_shape), opts.latent, opts.recon_loss, opts.beta
        self.encoder = nn.Sequential(nn.Flatten(), *dense([n_in, *opts.encoder], opts.activation, True))
        h = ([n_in] + opts.encoder)[-1]
        self.mu = nn.Linear(h, opts.latent)
        self.logvar = nn.Linear(h, opts.latent)  # log sigma^2 of q(z|x)
        self.decoder = nn.Sequential(*dense([opts.latent, *reversed(opts.encoder), n_in], opts.activation, False),
                                     nn.Sigmoid() if opts.recon_loss == "bce" else nn.Identity(),
                                     nn.Unflatten(1, self.input_shape))
        self._checked_range = False

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """x (B, *shape) -> recon (B, *shape), mu (B, latent), logvar (B, latent).

        In eval mode eps comes from a generator seeded 0, so evaluation is repeatable and draws
        nothing from the global random state; it is still a sample, so the eval loss estimates the ELBO."""
        h = self.encoder(x)
        mu, logvar = self.mu(h), self.logvar(h)
        if self.training:
            eps = torch.randn_like(mu)
        else:
            g = torch.Generator(device=mu.device).manual_seed(0)
            eps = torch.randn(mu.shape, generator=g, device=mu.device, dtype=mu.dtype)
        z = mu + torch.exp(0.5 * logvar) * eps  # reparameterisation: the gradient flows through mu and logvar
        return self.decoder(z), mu, logvar

    def compute_loss(self, batch: tuple, outputs: tuple) -> torch.Tensor:
        """Negative ELBO averaged over the batch's samples, in nats:
        -log p(x|z) summed over the sample's values + beta * KL(N(mu, sigma^2) || N(0, I))."""
        x = batch[0].flatten(1).float()
        recon, mu, logvar = (t.float() for t in outputs)
        recon = recon.flatten(1)
        if self.recon_loss == "bce":
            if not self._checked_range:  # once: a loud error instead of a meaningless loss
                lo, hi = float(x.min()), float(x.max())
                if lo < 0 or hi > 1:
                    raise ShapeError(f"VAE: recon_loss 'bce' needs inputs in [0, 1], got values in [{lo:.3g}, {hi:.3g}]; "
                                     f"set data.normalize: false or model.recon_loss: mse")
                self._checked_range = True
            with torch.autocast(x.device.type, enabled=False):  # BCE is unsafe under autocast: fp32
                nll = F.binary_cross_entropy(recon, x, reduction="none").sum(1)
        else:
            nll = 0.5 * (recon - x).pow(2).sum(1)  # Gaussian with unit variance, constant 0.5*log(2*pi) per value dropped
        kl = -0.5 * (1 + logvar - mu.pow(2) - logvar.exp()).sum(1)
        return (nll + self.beta * kl).mean()

    def elbo_nats(self, mean_loss: float) -> Optional[float]:
        """The ELBO per sample, in nats, that a mean of `compute_loss` stands for: -loss, with the constant that
        the mse loss drops (0.5 * log(2 pi) per value) put back; None for beta != 1, where the loss is the
        beta-VAE objective and not the negative ELBO."""
        if self.beta != 1:
            return None
        const = 0.5 * math.log(2 * math.pi) * math.prod(self.input_shape) if self.recon_loss == "mse" else 0.0
        return -(mean_loss + const)

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        """Decode the posterior mean: the VAE's best reconstruction of x, without sampling noise."""
        return self.decoder(self.mu(self.encoder(x)))

    @torch.no_grad()
    def sample(self, n: int, generator: Optional[torch.Generator] = None) -> torch.Tensor:
        """Draw n codes from the prior N(0, I) and decode them: (n, *input_shape)."""
        device = self.mu.weight.device
        z = torch.randn(n, self.latent, generator=generator, device=device)
        return self.decoder(z)


@MODELS.register("vae", VAEOptions)
def build_vae(opts: VAEOptions, meta: DataMeta) -> nn.Module:
    """Variational autoencoder: ELBO as its compute_loss, sample(n) from the prior."""
    check_task("vae", meta)
    return VAE(opts, tuple(meta.input_shape))
