"""FLOPs of a forward pass and of one training step, counted by `torch.utils.flop_counter`.

Counting runs the model once under `FlopCounterMode`, so it is done once per input shape
(`FlopCache`), never on every step.

Convention (the one PaLM's MFU and nanoGPT's `estimate_mfu` use): *model* FLOPs.
  - a multiply-add is 2 FLOPs; only matmul-like ops are counted (mm, addmm, bmm, conv,
    attention, RNN layers). Bias adds, norms, softmax, activations and optimizer updates are not.
  - attention counts the full T x T score matrix even when causal (no discount for the mask);
    its backward counts 2x its forward (dQ, dK, dV, dP), not the recomputation a flash kernel
    does. torch's own formulas for the CUDA flash/efficient/cuDNN backward count that
    recomputation (2.5x forward); powertrain replaces them so that CPU and GPU count alike,
    and alike with the math path, whose bmm's torch counts one by one.

torch 2.13 counts zero for some ops that do matmuls; powertrain registers formulas for them:
  - `aten._scaled_dot_product_flash_attention_for_cpu` (+ `_backward`): what
    `F.scaled_dot_product_attention` dispatches to on CPU (fp32/fp64/GQA, no dropout, no mask
    that needs a gradient; those fall back to the math path of bmm's, counted by torch).
  - `aten.mkldnn_rnn_layer` (+ `_backward`): `nn.LSTM` on CPU.
and replaces one that overcounts: `aten.convolution_backward`'s weight gradient for grouped
convolutions (torch counts it `groups` times).
The fused inference fast paths `aten._transformer_encoder_layer_fwd` and
`aten._native_multi_head_attention` (nn.TransformerEncoderLayer / nn.MultiheadAttention in
eval mode under no_grad) have no formula: they count 0 and add a warning to the `FlopCount`.
`forward_flops` counts with autograd enabled, so those fast paths are not taken there.

>>> import torch
>>> net = torch.nn.Linear(4, 3, bias=False)
>>> forward_flops(net, torch.randn(2, 4)).total      # 2 * batch * in * out
48
>>> train_step_flops(net, torch.randn(2, 4)).total   # + grad of the weight; the input needs none
96
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

import torch
from torch.utils._pytree import tree_flatten
from torch.utils.flop_counter import FlopCounterMode, conv_flop_count, sdpa_flop_count

aten = torch.ops.aten

__all__ = ["FlopCount", "FlopCache", "count_flops", "forward_flops", "train_step_flops", "shape_key",
           "attention_flops", "FLOP_FORMULAS"]


def attention_flops(query_shape, key_shape, value_shape, backward: bool = False) -> int:
    """Model FLOPs of scaled-dot-product attention: QK^T and PV (2 FLOPs per multiply-add).

    Backward is 2x forward (dQ, dK from dS; dV, dP from dO). GQA (fewer KV heads) is allowed.

    >>> attention_flops((1, 2, 8, 16), (1, 2, 8, 16), (1, 2, 8, 16))   # 2 * (2*2*8*16*8)
    8192
    """
    fwd = sdpa_flop_count(tuple(query_shape), tuple(key_shape), tuple(value_shape))
    return 2 * fwd if backward else fwd


def _sdpa_fwd(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    return attention_flops(query_shape, key_shape, value_shape)


def _sdpa_bwd(grad_out_shape, query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    return attention_flops(query_shape, key_shape, value_shape, backward=True)


def _rnn_layer_flops(input_shape, w_ih_shape, w_hh_shape) -> int:
    """2 * (time * batch) * (|W_ih| + |W_hh|): each step multiplies x_t by W_ih and h_{t-1} by W_hh."""
    steps_x_batch = 1
    for d in input_shape[:-1]:
        steps_x_batch *= d
    return 2 * steps_x_batch * (w_ih_shape[0] * w_ih_shape[1] + w_hh_shape[0] * w_hh_shape[1])


def _rnn_fwd(input_shape, w_ih_shape, w_hh_shape, *args, out_shape=None, **kwargs) -> int:
    return _rnn_layer_flops(input_shape, w_ih_shape, w_hh_shape)


def _rnn_bwd(input_shape, w_ih_shape, w_hh_shape, *args, out_shape=None, **kwargs) -> int:
    # grads of the input/hidden state and of both weights: 2x forward
    return 2 * _rnn_layer_flops(input_shape, w_ih_shape, w_hh_shape)


def _conv_bwd(grad_out_shape, x_shape, w_shape, _bias, _stride, _padding, _dilation, transposed,
              _output_padding, _groups, output_mask, out_shape=None, **kwargs) -> int:
    """Convolution backward. The input gradient as torch counts it (a transposed conv of
    grad_out with the weight); the weight gradient pairs every output with every kernel tap once,
    exactly like the forward. torch 2.13 counts the weight gradient as an ungrouped conv, i.e.
    `groups` times too many (a depthwise conv: C times)."""
    flops = 0
    if output_mask[0]:
        flops += conv_flop_count(grad_out_shape, w_shape, out_shape[0], not transposed)
    if output_mask[1]:
        flops += conv_flop_count(x_shape, w_shape, grad_out_shape, transposed)
    return flops


#: op -> formula over shapes, passed to FlopCounterMode(custom_mapping=...) (torch's registry
#: is left untouched). Formulas take the op's arguments with tensors replaced by their shapes.
FLOP_FORMULAS: dict[Any, Callable[..., int]] = {
    aten._scaled_dot_product_flash_attention_for_cpu: _sdpa_fwd,
    aten._scaled_dot_product_flash_attention_for_cpu_backward: _sdpa_bwd,
    # same model-FLOPs convention for the GPU kernels' backward (torch counts the recompute)
    aten._scaled_dot_product_flash_attention_backward: _sdpa_bwd,
    aten._scaled_dot_product_efficient_attention_backward: _sdpa_bwd,
    aten._scaled_dot_product_cudnn_attention_backward: _sdpa_bwd,
    aten.convolution_backward: _conv_bwd,
    aten.mkldnn_rnn_layer: _rnn_fwd,
    aten.mkldnn_rnn_layer_backward: _rnn_bwd,
}

# Fused ops that do matmuls but have no formula: seen -> a warning in the FlopCount.
_OPAQUE_OPS = {
    aten._transformer_encoder_layer_fwd: "nn.TransformerEncoderLayer fast path",
    aten._native_multi_head_attention: "nn.MultiheadAttention fast path",
}


@dataclass(frozen=True)
class FlopCount:
    """FLOPs counted in one run of a function: the total and a split by aten op."""

    total: int
    by_op: dict[str, int] = field(default_factory=dict)
    warnings: tuple[str, ...] = ()


def count_flops(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> tuple[Any, FlopCount]:
    """Run `fn(*args, **kwargs)` once under FlopCounterMode with powertrain's formulas.

    Returns `(fn's result, FlopCount)`. The engine can wrap the first real training step of each
    shape in this, so the count has no side effects beyond the step itself.

    >>> import torch
    >>> _, n = count_flops(torch.mm, torch.ones(2, 3), torch.ones(3, 4))
    >>> n.total
    48
    """
    seen: set[str] = set()

    def opaque(name: str) -> Callable[..., int]:
        def formula(*a: Any, **k: Any) -> int:
            seen.add(name)
            return 0
        return formula

    mapping = dict(FLOP_FORMULAS)
    mapping.update({op: opaque(why) for op, why in _OPAQUE_OPS.items()})
    counter = FlopCounterMode(display=False, custom_mapping=mapping)
    with counter:
        result = fn(*args, **kwargs)
    by_op = {str(op): int(n) for op, n in counter.get_flop_counts().get("Global", {}).items() if n}
    warnings = tuple(f"{why}: a fused op with no FLOP formula counted 0; count with autograd enabled "
                     f"(forward_flops does)" for why in sorted(seen))
    return result, FlopCount(int(counter.get_total_flops()), by_op, warnings)


@contextlib.contextmanager
def _no_side_effects(model: torch.nn.Module) -> Iterator[None]:
    """Restore the RNG (dropout) and the buffers (BatchNorm running stats) after counting."""
    saved = [(b, b.detach().clone()) for b in model.buffers()]
    devices = [torch.cuda.current_device()] if torch.cuda.is_available() and torch.cuda.is_initialized() else []
    with torch.random.fork_rng(devices=devices):
        try:
            yield
        finally:
            with torch.no_grad():
                for b, value in saved:
                    b.copy_(value)


def _default_loss(outputs: Any) -> torch.Tensor:
    """Sum of every floating tensor in the model's output: no FLOPs, and a gradient to all of it."""
    leaves = [t for t in tree_flatten(outputs)[0] if isinstance(t, torch.Tensor) and t.is_floating_point()]
    if not leaves:
        raise TypeError("train_step_flops: the model returned no floating-point tensor; pass loss_fn=")
    return sum(t.float().sum() for t in leaves)


def forward_flops(model: torch.nn.Module, *inputs: Any, **kwargs: Any) -> FlopCount:
    """FLOPs of `model(*inputs, **kwargs)`, one forward pass. Buffers and RNG are left as found.

    >>> import torch
    >>> forward_flops(torch.nn.Linear(8, 2, bias=False), torch.randn(5, 8)).total  # 2*5*8*2
    160
    """
    with _no_side_effects(model), torch.enable_grad():
        return count_flops(model, *inputs, **kwargs)[1]


def train_step_flops(model: torch.nn.Module, *inputs: Any,
                     loss_fn: Callable[[Any], torch.Tensor] | None = None, **kwargs: Any) -> FlopCount:
    """FLOPs of forward + backward: gradients of the parameters (and of any input tensor that
    requires grad), as `loss.backward()` would compute them.

    The `.grad` fields it fills are put back as they were, and so are buffers and RNG.
    `loss_fn(outputs) -> scalar` defaults to the sum of the outputs (0 FLOPs). The optimizer's
    update is elementwise and not counted (as in 6*N*D).

    >>> import torch
    >>> train_step_flops(torch.nn.Linear(8, 2, bias=False), torch.randn(5, 8)).total  # fwd + dW
    320
    """
    leaves = [p for p in model.parameters() if p.requires_grad]
    leaves += [t for t in tree_flatten((inputs, kwargs))[0] if isinstance(t, torch.Tensor) and t.requires_grad]
    loss_fn = loss_fn or _default_loss

    def step() -> None:
        loss_fn(model(*inputs, **kwargs)).backward()

    saved = [t.grad for t in leaves]
    try:
        for t in leaves:
            t.grad = None
        with _no_side_effects(model), torch.enable_grad():
            return count_flops(step)[1]
    finally:
        for t, g in zip(leaves, saved):
            t.grad = g


def shape_key(*args: Any, **kwargs: Any) -> tuple:
    """A hashable key of the shapes and dtypes of the tensors in a batch (other leaves by value).

    >>> import torch
    >>> shape_key(torch.zeros(2, 3)) == shape_key(torch.ones(2, 3))
    True
    """
    leaves, spec = tree_flatten((args, kwargs))
    parts = []
    for x in leaves:
        if isinstance(x, torch.Tensor):
            parts.append(("T", tuple(x.shape), str(x.dtype), x.device.type))
        else:
            try:
                hash(x)
                parts.append(x)
            except TypeError:
                parts.append(repr(x))
    return (str(spec), tuple(parts))


class FlopCache:
    """Counts a model's FLOPs once per input shape and remembers them.

    >>> import torch
    >>> cache = FlopCache(torch.nn.Linear(8, 2, bias=False))
    >>> cache.train_step(torch.randn(5, 8)), cache.train_step(torch.randn(5, 8)), len(cache)
    (320, 320, 1)
    """

    def __init__(self, model: torch.nn.Module, loss_fn: Callable[[Any], torch.Tensor] | None = None):
        self.model = model
        self.loss_fn = loss_fn
        self._counts: dict[tuple, FlopCount] = {}

    def __len__(self) -> int:
        return len(self._counts)

    def count(self, kind: str, *inputs: Any, **kwargs: Any) -> FlopCount:
        """The cached FlopCount for `kind` ("forward" or "train_step") at this input shape."""
        key = (kind, shape_key(*inputs, **kwargs))
        if key not in self._counts:
            if kind == "forward":
                self._counts[key] = forward_flops(self.model, *inputs, **kwargs)
            elif kind == "train_step":
                self._counts[key] = train_step_flops(self.model, *inputs, loss_fn=self.loss_fn, **kwargs)
            else:
                raise ValueError(f"FlopCache.count: kind '{kind}' is not 'forward' or 'train_step'")
        return self._counts[key]

    def forward(self, *inputs: Any, **kwargs: Any) -> int:
        return self.count("forward", *inputs, **kwargs).total

    def train_step(self, *inputs: Any, **kwargs: Any) -> int:
        return self.count("train_step", *inputs, **kwargs).total
