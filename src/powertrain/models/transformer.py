"""Transformer encoder classifier, and the pre-norm block that the GPT (gpt.py) shares.

    input:     SequenceInput (see rnn.py): (C, L) signals -> L steps of C features, (L,) tokens -> L tokens
    embed:     signals: Conv1d(features -> d_model, kernel=patch, stride=patch_stride), one token per patch
               of steps (patch 1: each step is a token); tokens: Embedding(vocab -> d_model)
               [+ a learned CLS token in front] + positions (sinusoidal, or learned)
    blocks:    n_layer x  x = x + attn(ln_1(x));  x = x + mlp(ln_2(x))          (pre-norm, as GPT-2)
    head:      ln_f -> mean over the steps (padding excluded), or the CLS step -> Linear(d_model -> outputs)

Attention is `F.scaled_dot_product_attention`: one call for all heads, causal (GPT) or with a
padding mask (this encoder). Weights start as in nanoGPT: normal(0, 0.02), and the projections
that write into the residual stream (`c_proj`) scaled by 1/sqrt(2 * n_layer).

>>> from powertrain import models
>>> from powertrain.data import DataMeta
>>> net = models.build({"name": "transformer", "d_model": 32, "n_head": 4, "n_layer": 2}, DataMeta((1, 40), "multiclass", 10))
>>> models.count_params(net)  # 2 blocks of 12*32*32 + 13*32, input 1*32+32, ln_f 2*32, head 32*10+10
25866
"""
from __future__ import annotations

import math
from typing import Literal, Optional

import torch
import torch.nn.functional as F
from pydantic import Field, model_validator
from torch import nn

from ..data.bundle import DataMeta
from ..recipe.registry import Options
from .registry import MODELS, output_size
from .check import ShapeError
from .rnn import SequenceInput


# ---------------------------------------------------------------- the block (shared with gpt.py)
class SelfAttention(nn.Module):
    def __init__(self, d: int, n_head: int, dropout: float = 0.0, bias: bool = True, causal: bool = False,
                 head_dim: Optional[int] = None):
        super().__init__()
        assert head_dim is not None or d % n_head == 0, f"d ({d}) must be a multiple of n_head ({n_head})"
        self.n_head, self.dropout, self.causal = n_head, dropout, causal
        self.inner = n_head * (head_dim or d // n_head)  # the heads side by side: d, or less once heads are pruned
        self.c_attn = nn.Linear(d, 3 * self.inner, bias=bias)  # query, key and value for all heads in one matmul
        self.c_proj = nn.Linear(self.inner, d, bias=bias)  # mixes the heads back into the residual stream
        self.resid_dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, keep: Optional[torch.Tensor] = None) -> torch.Tensor:
        """x (B, T, d) -> (B, T, d); keep (B, T) bool: the keys that may be attended to (False at padding)."""
        B, T, d = x.shape
        q, k, v = self.c_attn(x).split(self.inner, dim=2)
        q, k, v = (t.view(B, T, self.n_head, self.inner // self.n_head).transpose(1, 2) for t in (q, k, v))  # (B, nh, T, hs)
        mask = None if keep is None else keep[:, None, None, :]  # (B, 1, 1, T), broadcast over heads and queries
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=self.dropout if self.training else 0.0,
                                           is_causal=self.causal)  # softmax(q k^T / sqrt(hs)) v
        y = y.transpose(1, 2).contiguous().view(B, T, self.inner)  # heads side by side again
        return self.resid_dropout(self.c_proj(y))


class FeedForward(nn.Module):
    def __init__(self, d: int, d_ff: int, dropout: float = 0.0, bias: bool = True):
        super().__init__()
        self.c_fc = nn.Linear(d, d_ff, bias=bias)
        self.gelu = nn.GELU()
        self.c_proj = nn.Linear(d_ff, d, bias=bias)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, T, d) -> (B, T, d)
        return self.dropout(self.c_proj(self.gelu(self.c_fc(x))))


class Block(nn.Module):
    shard_unit = True  # the unit activation checkpointing recomputes and FSDP shards (train/distributed.py)

    def __init__(self, d: int, n_head: int, d_ff: int, dropout: float = 0.0, bias: bool = True, causal: bool = False,
                 head_dim: Optional[int] = None):
        super().__init__()
        self.ln_1 = nn.LayerNorm(d, bias=bias)
        self.attn = SelfAttention(d, n_head, dropout, bias, causal, head_dim)
        self.ln_2 = nn.LayerNorm(d, bias=bias)
        self.mlp = FeedForward(d, d_ff, dropout, bias)

    def forward(self, x: torch.Tensor, keep: Optional[torch.Tensor] = None) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x), keep)
        return x + self.mlp(self.ln_2(x))


def init_weights(model: nn.Module, n_layer: int) -> None:
    """nanoGPT's init for every Linear and Embedding in `model`: normal(0, 0.02), zero biases, and the
    residual projections (`c_proj`) at 0.02/sqrt(2 * n_layer), so the residual stream's variance does
    not grow with depth."""
    for m in model.modules():
        if isinstance(m, (nn.Linear, nn.Embedding)):
            nn.init.normal_(m.weight, mean=0.0, std=0.02)
        if isinstance(m, nn.Linear) and m.bias is not None:
            nn.init.zeros_(m.bias)
    for name, p in model.named_parameters():
        if name.endswith("c_proj.weight"):
            nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * n_layer))


def sinusoidal_positions(n: int, d: int) -> torch.Tensor:
    """(n, d): PE[pos, 2i] = sin(pos / 10000^(2i/d)), PE[pos, 2i+1] = cos(pos / 10000^(2i/d)) (Vaswani et al.)."""
    pos = torch.arange(n, dtype=torch.float32)[:, None]
    freq = torch.exp(-math.log(10000.0) * torch.arange(0, d, 2, dtype=torch.float32) / d)  # (ceil(d/2),)
    pe = torch.zeros(n, d)
    pe[:, 0::2] = torch.sin(pos * freq)
    pe[:, 1::2] = torch.cos(pos * freq)[:, : d // 2]
    return pe


# ---------------------------------------------------------------- the encoder classifier
class TransformerOptions(Options):
    d_model: int = Field(64, ge=1)  # width of the residual stream
    n_head: int = Field(4, ge=1)  # attention heads; must divide d_model
    head_dim: Optional[int] = Field(None, ge=1)  # width of each head; None: d_model / n_head (set by head pruning)
    n_layer: int = Field(2, ge=1)  # transformer blocks
    d_ff: Optional[int] = Field(None, ge=1)  # hidden width of each block's MLP; None: 4 * d_model
    dropout: float = Field(0.0, ge=0, lt=1)  # after embeddings, on attention weights and on each residual branch
    bias: bool = True  # bias in Linears and LayerNorms
    positions: Literal["sinusoidal", "learned"] = "sinusoidal"
    pool: Literal["mean", "cls"] = "mean"  # classify the mean of the steps, or a learned CLS token put in front
    max_len: Optional[int] = Field(None, ge=1)  # longest sequence accepted, in input steps; None: the dataset's length
    channels_first: bool = True  # rank-2 samples are (C, L), as for Conv1d; false: (L, F)
    patch: int = Field(1, ge=1)  # signals: input steps per token (ViT-style patches); 1: every step is a token
    patch_stride: Optional[int] = Field(None, ge=1)  # steps between patches; None: = patch (no overlap)

    @model_validator(mode="after")
    def _heads_divide(self):
        if self.head_dim is None and self.d_model % self.n_head:
            raise ValueError(f"d_model ({self.d_model}) must be a multiple of n_head ({self.n_head})")
        return self


class TransformerClassifier(nn.Module):
    def __init__(self, opts: TransformerOptions, meta: DataMeta):
        super().__init__()
        d = opts.d_model
        self.input = SequenceInput(meta, opts.channels_first, embed_dim=d)  # tokens: Embedding(vocab, d)
        if self.input.tokens and opts.patch != 1:
            raise ShapeError(f"transformer: patch={opts.patch} groups signal steps, but this data is tokens; set model.patch: 1")
        self.proj = None if self.input.tokens else nn.Conv1d(  # signals: each patch of steps -> d
            self.input.n_features, d, kernel_size=opts.patch, stride=opts.patch_stride or opts.patch)
        self.cls = nn.Parameter(torch.zeros(1, 1, d)) if opts.pool == "cls" else None
        self.max_len = opts.max_len or self.input.seq_len
        if self.proj is not None and self.max_len < opts.patch:
            raise ShapeError(f"transformer: layer 'proj' takes patches of {opts.patch} steps, but the sequences have "
                             f"{self.max_len} (data shape {tuple(meta.input_shape)}); lower model.patch")
        n_tokens = self.max_len if self.proj is None else (self.max_len - opts.patch) // self.proj.stride[0] + 1
        n_pos = n_tokens + (self.cls is not None)
        self.wpe = nn.Embedding(n_pos, d) if opts.positions == "learned" else None
        self.register_buffer("pe", sinusoidal_positions(n_pos, d) if self.wpe is None else None, persistent=False)
        self.drop = nn.Dropout(opts.dropout)
        self.blocks = nn.ModuleList(Block(d, opts.n_head, opts.d_ff or 4 * d, opts.dropout, opts.bias, head_dim=opts.head_dim)
                                    for _ in range(opts.n_layer))
        self.ln_f = nn.LayerNorm(d, bias=opts.bias)
        self.head = nn.Linear(d, output_size(meta))

        init_weights(self, opts.n_layer)
        if self.input.embed is not None:  # unit-scale embeddings, on a par with the sinusoid's amplitude
            nn.init.normal_(self.input.embed.weight, std=1.0)
        if self.proj is not None:
            self.proj.reset_parameters()  # PyTorch's default: outputs on the scale of the inputs
        if self.cls is not None:
            nn.init.normal_(self.cls, std=0.02)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, *input_shape) -> (B, outputs)
        keep = self.input.keep(x)  # (B, L) or None
        h = self.input(x)  # (B, L, F), or (B, L, d) for tokens
        L = h.shape[1]
        if L > self.max_len:
            raise ShapeError(f"{type(self).__name__}: layer 'positions' holds max_len={self.max_len} steps, but the input "
                             f"{tuple(x.shape)} has {L}; set model.max_len or shorten the sequences")
        if self.proj is not None:
            h = self.proj(h.transpose(1, 2)).transpose(1, 2)  # (B, F, L) -> (B, d, n_tokens) -> (B, n_tokens, d)
        B, _, d = h.shape
        if self.cls is not None:
            h = torch.cat([self.cls.expand(B, 1, d), h], dim=1)  # (B, 1 + tokens, d)
            keep = None if keep is None else F.pad(keep, (1, 0), value=True)
        T = h.shape[1]
        pos = self.pe[:T] if self.wpe is None else self.wpe(torch.arange(T, device=h.device))  # (T, d)
        h = self.drop(h + pos)
        for block in self.blocks:
            h = block(h, keep)
        h = self.ln_f(h)
        if self.cls is not None:
            summary = h[:, 0]
        elif keep is None:
            summary = h.mean(1)
        else:
            summary = (h * keep[..., None]).sum(1) / keep.sum(1, keepdim=True)
        return self.head(summary)


@MODELS.register("transformer", TransformerOptions)
def build_transformer(opts: TransformerOptions, meta: DataMeta) -> nn.Module:
    """Pre-norm transformer encoder classifier over (C, L) signals or (L,) tokens."""
    return TransformerClassifier(opts, meta)
