"""GPT: a decoder-only, causal transformer language model, after nanoGPT's model.py.

    idx (B, T) int64 tokens, T <= block_size
    x = drop(wte(idx) + wpe(0..T-1))                         (B, T, n_embd)
    n_layer x Block(causal): x = x + attn(ln_1(x)); x = x + mlp(ln_2(x))   (transformer.py)
    logits = lm_head(ln_f(x))                                (B, T, vocab_size); lm_head shares wte's weight

Trained by the Trainer's `language_model` task: cross-entropy of logits[:, t] against y[:, t], the
token that follows position t. Parameters, with d = n_embd, V = vocab_size, B = block_size and
L = n_layer: V*d + B*d + L*(12*d^2 + 2*d) + d without biases (+ 11*d per layer and + d with them).

>>> import torch
>>> from powertrain import models
>>> from powertrain.data import DataMeta
>>> meta = DataMeta((32,), "language_model", vocab_size=65, input_dtype=torch.long)
>>> gpt = models.build({"name": "gpt", "n_layer": 2, "n_head": 2, "n_embd": 32}, meta)
>>> models.count_params(gpt)  # 65*32 + 32*32 + 2*(12*32*32 + 2*32) + 32
27840
>>> gpt.generate(torch.zeros(1, 1, dtype=torch.long), max_new_tokens=5).shape
torch.Size([1, 6])
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from pydantic import Field, model_validator
from torch import nn

from ..data.bundle import DataMeta
from ..recipe.registry import Options
from .registry import MODELS
from .check import ShapeError
from .transformer import Block, init_weights


class GPTOptions(Options):
    n_layer: int = Field(4, ge=1)  # transformer blocks
    n_head: int = Field(4, ge=1)  # attention heads per block; must divide n_embd
    head_dim: Optional[int] = Field(None, ge=1)  # width of each head; None: n_embd / n_head (set by head pruning)
    n_embd: int = Field(128, ge=1)  # width of the residual stream (d)
    block_size: Optional[int] = Field(None, ge=1)  # longest context in tokens; None: the dataset's sequence length
    dropout: float = Field(0.0, ge=0, lt=1)  # after the embeddings, on attention weights and on each residual branch
    bias: bool = False  # bias in Linears and LayerNorms: True like GPT-2, False is a bit better and faster

    @model_validator(mode="after")
    def _heads_divide(self):
        if self.head_dim is None and self.n_embd % self.n_head:
            raise ValueError(f"n_embd ({self.n_embd}) must be a multiple of n_head ({self.n_head})")
        return self


class GPT(nn.Module):
    def __init__(self, opts: GPTOptions, vocab_size: int, block_size: int):
        super().__init__()
        d = opts.n_embd
        self.vocab_size, self.block_size = vocab_size, block_size
        self.wte = nn.Embedding(vocab_size, d)  # token embeddings
        self.wpe = nn.Embedding(block_size, d)  # learned position embeddings
        self.drop = nn.Dropout(opts.dropout)
        self.h = nn.ModuleList(Block(d, opts.n_head, 4 * d, opts.dropout, opts.bias, causal=True, head_dim=opts.head_dim)
                               for _ in range(opts.n_layer))
        self.ln_f = nn.LayerNorm(d, bias=opts.bias)
        self.lm_head = nn.Linear(d, vocab_size, bias=False)
        self.lm_head.weight = self.wte.weight  # weight tying: one (V, d) matrix embeds tokens and scores them
        init_weights(self, opts.n_layer)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:  # (B, T) int64 -> logits (B, T, V)
        if idx.dim() != 2 or idx.is_floating_point():
            raise ShapeError(f"GPT: layer 'wte' expects integer tokens shaped (B, T), got {idx.dtype} of shape {tuple(idx.shape)}")
        B, T = idx.shape
        if T > self.block_size:
            raise ShapeError(f"GPT: layer 'wpe' holds block_size={self.block_size} positions, but the input "
                             f"{tuple(idx.shape)} has {T} tokens; crop to the last {self.block_size} or raise model.block_size")
        pos = torch.arange(T, device=idx.device)
        x = self.drop(self.wte(idx) + self.wpe(pos))  # (B, T, d) + (T, d)
        for block in self.h:
            x = block(x)
        return self.lm_head(self.ln_f(x))

    @torch.no_grad()
    def generate(self, prompt_idx: torch.Tensor, max_new_tokens: int, temperature: float = 1.0,
                 top_k: Optional[int] = None, generator: Optional[torch.Generator] = None) -> torch.Tensor:
        """Append `max_new_tokens` sampled tokens to `prompt_idx` ((B, T) or (T,)) and return it, same rank.

        Each step sees the last `block_size` tokens, divides the last logits by `temperature`
        (0: take the most likely token), keeps only the `top_k` most likely tokens if given, and samples."""
        idx = prompt_idx[None] if prompt_idx.dim() == 1 else prompt_idx
        if idx.shape[1] == 0:
            raise ValueError("generate: the prompt is empty; give at least one token")
        was_training = self.training
        self.eval()
        try:
            for _ in range(max_new_tokens):
                logits = self(idx[:, -self.block_size:])[:, -1, :]  # (B, V)
                if temperature == 0:
                    idx_next = logits.argmax(-1, keepdim=True)
                else:
                    logits = logits / temperature
                    if top_k is not None:
                        kth = torch.topk(logits, min(top_k, logits.size(-1))).values[:, [-1]]  # (B, 1)
                        logits = logits.masked_fill(logits < kth, float("-inf"))
                    idx_next = torch.multinomial(F.softmax(logits, dim=-1), 1, generator=generator)  # (B, 1)
                idx = torch.cat([idx, idx_next], dim=1)
        finally:
            self.train(was_training)
        return idx[0] if prompt_idx.dim() == 1 else idx


@MODELS.register("gpt", GPTOptions)
def build_gpt(opts: GPTOptions, meta: DataMeta) -> nn.Module:
    """Decoder-only causal transformer language model with tied embeddings (nanoGPT)."""
    dtype = meta.input_dtype
    if meta.vocab_size is None or dtype.is_floating_point or len(meta.input_shape) != 1:
        raise ShapeError(f"gpt: layer 'wte' needs (T,) integer tokens with meta.vocab_size set; the data gives "
                         f"{tuple(meta.input_shape)} of {dtype} and no vocabulary; use a text dataset")
    if meta.task != "language_model":
        raise ShapeError(f"gpt: layer 'lm_head' predicts the next token at every position, which needs task "
                         f"'language_model', but the data's task is '{meta.task}'; use transformer or rnn to classify")
    T = meta.input_shape[0]
    block_size = opts.block_size or T
    if T > block_size:
        raise ShapeError(f"gpt: layer 'wpe' holds block_size={block_size} positions, but the data's samples have "
                         f"shape ({T},); set model.block_size >= {T} or make the dataset's sequences shorter")
    return GPT(opts, int(meta.vocab_size), block_size)
