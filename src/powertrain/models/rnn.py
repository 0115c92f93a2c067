"""Recurrent classifier: an LSTM or GRU over a sequence, uni- or bidirectional, one or more layers.

How a sample (shape without the batch dimension) becomes a sequence of L steps (`SequenceInput`,
shared with the transformer):

    (L,)  integer tokens  -> L embeddings; needs meta.vocab_size and an integer
                             meta.input_dtype; meta.pad_id marks padding at the end
    (L,)  floats          -> L steps of 1 feature
    (C, L)                -> L steps of C features: channels first, as Conv1d and mnist1d (N, 1, 40) store
                             them; the model transposes. `channels_first: false` reads (L, F) instead
    (C, H, W)             -> H steps (image rows) of C*W features

The sequence is summarised by the last hidden state of the last layer (forward and backward states
concatenated when bidirectional), by the mean or max of the outputs over time, or by all the outputs
side by side (`flatten`, as the MNIST-1D paper's GRU: bidirectional, hidden 6, 5,134 parameters), and a
Linear maps that summary to the outputs. Padded token sequences are packed, so padding changes no result.

>>> from powertrain import models
>>> from powertrain.data import DataMeta
>>> net = models.build({"name": "rnn", "cell": "gru", "hidden": 32}, DataMeta((1, 40), "multiclass", 10))
>>> models.count_params(net)  # GRU: 3 * (32 * (1 + 32) + 2 * 32); head: 32 * 10 + 10
3690
"""
from __future__ import annotations

from typing import Literal, Optional

import torch
from pydantic import Field
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from ..data.bundle import DataMeta
from ..recipe.registry import Options
from .registry import MODELS, output_size
from .check import ShapeError


class SequenceInput(nn.Module):
    """Turns a batch of samples shaped like `meta.input_shape` into (B, L, F) steps, or (B, L, embed_dim)
    embeddings for integer tokens; `keep(x)` is the (B, L) mask of non-padding steps (None: no padding)."""

    def __init__(self, meta: DataMeta, channels_first: bool = True, embed_dim: int = 64):
        super().__init__()
        shape, dtype = tuple(meta.input_shape), meta.input_dtype
        self.tokens = not dtype.is_floating_point
        self.pad_id: Optional[int] = meta.pad_id if self.tokens else None
        self.embed: Optional[nn.Embedding] = None
        if self.tokens:
            if len(shape) != 1 or meta.vocab_size is None:
                raise ShapeError(f"token inputs must be shaped (L,) with meta.vocab_size set; the data gives "
                                 f"{shape} and no vocabulary")
            self.layout, self.seq_len, self.n_features = "(L,) tokens", shape[0], embed_dim
            self.embed = nn.Embedding(int(meta.vocab_size), embed_dim)
        elif len(shape) == 1:
            self.layout, self.seq_len, self.n_features = "(L,)", shape[0], 1
        elif len(shape) == 2 and channels_first:
            self.layout, self.seq_len, self.n_features = "(C, L)", shape[1], shape[0]
        elif len(shape) == 2:
            self.layout, self.seq_len, self.n_features = "(L, F)", shape[0], shape[1]
        elif len(shape) == 3:
            self.layout, self.seq_len, self.n_features = "(C, H, W)", shape[1], shape[0] * shape[2]
        else:
            raise ShapeError(f"a sequence model needs samples shaped (L,), (C, L), (L, F) or (C, H, W); the data gives {shape}")
        self.rank = len(shape)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != self.rank + 1:
            raise ShapeError(f"{type(self).__name__}: layer 'input' expects samples shaped {self.layout}, "
                             f"got a batch of shape {tuple(x.shape)}")
        if self.embed is not None:
            return self.embed(x)  # (B, L) -> (B, L, E)
        if self.layout == "(L,)":
            return x.unsqueeze(-1)  # (B, L) -> (B, L, 1)
        if self.layout == "(C, L)":
            return x.transpose(1, 2)  # (B, C, L) -> (B, L, C)
        if self.layout == "(C, H, W)":
            return x.permute(0, 2, 1, 3).flatten(2)  # (B, C, H, W) -> (B, H, C*W)
        return x  # (B, L, F)

    def keep(self, x: torch.Tensor) -> Optional[torch.Tensor]:
        """(B, L) bool, False at padding (expected at the end); a sequence of padding only keeps its first step."""
        if self.pad_id is None:
            return None
        keep = x != self.pad_id
        keep[:, 0] |= ~keep.any(1)
        return keep


class RNNOptions(Options):
    cell: Literal["lstm", "gru"] = "gru"
    hidden: int = Field(128, ge=1)  # hidden state size per direction
    layers: int = Field(1, ge=1)  # stacked recurrent layers
    bidirectional: bool = False
    pool: Literal["last", "mean", "max", "flatten"] = "last"  # summary of the sequence: the last hidden state,
    #     the mean or max of the outputs over time, or all outputs side by side (fixed length; mnist1d's GRU)
    dropout: float = Field(0.0, ge=0, lt=1)  # between recurrent layers and before the classifier
    embed_dim: int = Field(64, ge=1)  # embedding size, for integer token inputs only
    channels_first: bool = True  # rank-2 samples are (C, L), as for Conv1d; false: (L, F)


class RNNClassifier(nn.Module):
    def __init__(self, opts: RNNOptions, meta: DataMeta):
        super().__init__()
        self.pool, self.directions = opts.pool, 2 if opts.bidirectional else 1
        self.input = SequenceInput(meta, opts.channels_first, opts.embed_dim)
        Cell = nn.LSTM if opts.cell == "lstm" else nn.GRU
        self.rnn = Cell(self.input.n_features, opts.hidden, opts.layers, batch_first=True,
                        dropout=opts.dropout if opts.layers > 1 else 0.0, bidirectional=opts.bidirectional)
        self.drop = nn.Dropout(opts.dropout)
        steps = self.input.seq_len if opts.pool == "flatten" else 1
        self.head = nn.Linear(opts.hidden * self.directions * steps, output_size(meta))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, *input_shape) -> (B, outputs)
        keep = self.input.keep(x)  # (B, L) or None
        steps = self.input(x)  # (B, L, F)
        B, L = steps.shape[:2]
        if keep is not None:  # pack, so that the recurrence stops at each sequence's last real step
            lengths = keep.sum(1).clamp(min=1).cpu()
            steps = pack_padded_sequence(steps, lengths, batch_first=True, enforce_sorted=False)
        out, h = self.rnn(steps)  # out (B, L, D*H); h (layers*D, B, H), for the LSTM (h, c)
        if keep is not None:
            out = pad_packed_sequence(out, batch_first=True, total_length=L)[0]
        if self.pool == "last":
            h = h[0] if isinstance(h, tuple) else h
            summary = h[-self.directions:].transpose(0, 1).reshape(B, -1)  # last layer, [forward, backward]
        elif self.pool == "flatten":
            summary = out.flatten(1)  # (B, L * D*H); padding steps are zeros
        elif self.pool == "mean":
            summary = out.mean(1) if keep is None else out.sum(1) / keep.sum(1, keepdim=True).clamp(min=1)
        else:
            summary = (out if keep is None else out.masked_fill(~keep[..., None], float("-inf"))).amax(1)
        return self.head(self.drop(summary))


@MODELS.register("rnn", RNNOptions)
def build_rnn(opts: RNNOptions, meta: DataMeta) -> nn.Module:
    """LSTM/GRU classifier over sequences: (C, L) signals, (L, F) features or (L,) tokens."""
    return RNNClassifier(opts, meta)
