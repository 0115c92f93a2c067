"""FLOP counts against analytic formulas: a Linear stack, a conv layer by hand, a GPT (attention
included), an LSTM; plus the per-shape cache and the absence of side effects."""
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from powertrain.measure.flops import (FLOP_FORMULAS, FlopCache, attention_flops, count_flops, forward_flops,
                                      train_step_flops)

aten = torch.ops.aten


# --- Linear stack ------------------------------------------------------------------------------

def test_linear_stack_exact_and_within_1pct_of_6_params_samples():
    """flop_counter counts matmuls only: forward 2*B*sum(W); backward 2*B*W for every weight
    gradient plus 2*B*W for every input gradient except the first layer's (the batch does not
    require grad). Biases are parameters but their adds are not counted. So the exact count is
    6*B*sum(W) - 2*B*W_first, and 6*params*B is within 1% when the first layer and the biases
    are a small share of the parameters (here ~0.5%)."""
    torch.manual_seed(0)
    sizes = [8, 512, 512, 512, 10]
    net = nn.Sequential(*[m for a, b in zip(sizes, sizes[1:]) for m in (nn.Linear(a, b), nn.ReLU())][:-1])
    batch = 32
    x = torch.randn(batch, sizes[0])
    weights = [a * b for a, b in zip(sizes, sizes[1:])]
    params = sum(p.numel() for p in net.parameters())

    assert forward_flops(net, x).total == 2 * batch * sum(weights)
    step = train_step_flops(net, x).total
    assert step == 6 * batch * sum(weights) - 2 * batch * weights[0]
    assert abs(step - 6 * params * batch) / (6 * params * batch) < 0.01


def test_input_that_requires_grad_adds_the_first_layer_input_gradient():
    net = nn.Linear(16, 4, bias=False)
    x = torch.randn(3, 16, requires_grad=True)
    assert train_step_flops(net, x).total == 6 * 3 * 16 * 4


# --- one conv layer, by hand ---------------------------------------------------------------------

def test_conv_layer_counted_exactly_by_hand():
    # Conv2d(4 -> 8, 3x3, stride 2, no padding, groups 2) on a 2x4x9x9 batch.
    # output: 2 x 8 x 4 x 4 = 256 values, (9 - 3) // 2 + 1 = 4 per side
    # each output value: (4 / 2 groups) * 3 * 3 = 18 multiply-adds = 36 FLOPs
    conv = nn.Conv2d(4, 8, 3, stride=2, groups=2)
    x = torch.randn(2, 4, 9, 9)
    outputs = 2 * 8 * 4 * 4
    fwd = outputs * (4 // 2) * 3 * 3 * 2
    assert fwd == 9216
    assert forward_flops(conv, x).total == fwd
    # backward: the weight gradient pairs every output with every tap once more (= fwd);
    # the input gradient likewise (= fwd), only when the input requires grad
    assert train_step_flops(conv, x).total == 2 * fwd
    assert train_step_flops(conv, x.requires_grad_()).total == 3 * fwd


def test_grouped_conv_weight_gradient_is_not_counted_groups_times():
    """torch 2.13's convolution_backward formula counts a grouped conv's weight gradient as if
    ungrouped (x groups); powertrain's replacement agrees with torch for groups=1 and with the
    hand count (= forward) otherwise. A depthwise conv makes the difference large."""
    from torch.utils.flop_counter import FlopCounterMode

    for groups in (1, 8):
        conv = nn.Conv2d(8, 8, 3, padding=1, groups=groups)
        x = torch.randn(2, 8, 10, 10)
        fwd = 2 * 8 * 10 * 10 * (8 // groups) * 9 * 2
        assert train_step_flops(conv, x).total == 2 * fwd
        with FlopCounterMode(display=False) as torch_count:
            conv(x).sum().backward()
        assert torch_count.get_total_flops() == fwd + groups * fwd


def test_padded_conv_counts_padding_taps():
    # padding=1 keeps 16x16: 2*8*16*16 outputs x 3*3*3 taps x 2 (the zero taps are multiplied too)
    conv = nn.Conv2d(3, 8, 3, padding=1)
    assert forward_flops(conv, torch.randn(2, 3, 16, 16)).total == 2 * 8 * 16 * 16 * 27 * 2


# --- a tiny GPT: 6N + 12*L*H*Q*T per token -------------------------------------------------------

class Block(nn.Module):
    def __init__(self, d, heads, dropout=0.0):
        super().__init__()
        self.heads, self.dropout = heads, dropout
        self.ln1, self.ln2 = nn.LayerNorm(d, bias=False), nn.LayerNorm(d, bias=False)
        self.qkv, self.proj = nn.Linear(d, 3 * d, bias=False), nn.Linear(d, d, bias=False)
        self.fc, self.out = nn.Linear(d, 4 * d, bias=False), nn.Linear(4 * d, d, bias=False)

    def forward(self, x):
        b, t, d = x.shape
        q, k, v = self.qkv(self.ln1(x)).split(d, dim=2)
        q, k, v = (z.view(b, t, self.heads, d // self.heads).transpose(1, 2) for z in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True,
                                           dropout_p=self.dropout if self.training else 0.0)
        x = x + self.proj(y.transpose(1, 2).reshape(b, t, d))
        return x + self.out(F.gelu(self.fc(self.ln2(x))))


class TinyGPT(nn.Module):
    def __init__(self, vocab=96, block=32, d=64, heads=4, layers=2, dropout=0.0):
        super().__init__()
        self.wte, self.wpe = nn.Embedding(vocab, d), nn.Embedding(block, d)
        self.blocks = nn.ModuleList(Block(d, heads, dropout) for _ in range(layers))
        self.ln_f = nn.LayerNorm(d, bias=False)
        self.lm_head = nn.Linear(d, vocab, bias=False)

    def forward(self, idx):
        x = self.wte(idx) + self.wpe(torch.arange(idx.shape[1]))
        for blk in self.blocks:
            x = blk(x)
        return self.lm_head(self.ln_f(x))


def test_gpt_matches_palm_nanogpt_formula_within_1pct():
    L, H, d, T, B, V = 2, 4, 64, 32, 2, 96
    Q = d // H
    torch.manual_seed(0)
    gpt = TinyGPT(V, T, d, H, L)
    idx = torch.randint(0, V, (B, T))
    count = train_step_flops(gpt, idx)

    n_params = sum(p.numel() for p in gpt.parameters()) - gpt.wte.weight.numel() - gpt.wpe.weight.numel()
    formula_per_token = 6 * n_params + 12 * L * H * Q * T
    per_token = count.total / (B * T)
    assert abs(per_token - formula_per_token) / formula_per_token < 0.01

    # exactly: 6 x the matmul weights (LayerNorm gains are parameters without FLOPs) + attention
    matmul_weights = sum(m.weight.numel() for m in gpt.modules() if isinstance(m, nn.Linear))
    assert per_token == 6 * matmul_weights + 12 * L * H * Q * T


def test_cpu_attention_is_counted_through_the_registered_formula():
    L, H, d, T, B = 2, 4, 64, 32, 2
    gpt = TinyGPT(96, T, d, H, L)
    count = train_step_flops(gpt, torch.randint(0, 96, (B, T)))
    fwd = count.by_op["aten._scaled_dot_product_flash_attention_for_cpu"]
    bwd = count.by_op["aten._scaled_dot_product_flash_attention_for_cpu_backward"]
    # QK^T and PV: 2 * (2 * B * H * T * T * Q) per layer = 4 * B * T^2 * d per layer
    assert fwd == L * 4 * B * T * T * d
    assert bwd == 2 * fwd


def test_flash_formula_agrees_with_torchs_own_math_path_count():
    """With dropout, CPU SDPA takes the math path (bmm's that torch counts itself). The
    registered formula for the fused kernel must give the same total."""
    torch.manual_seed(0)
    idx = torch.randint(0, 96, (2, 32))
    fused = train_step_flops(TinyGPT(dropout=0.0), idx)
    math_path = train_step_flops(TinyGPT(dropout=0.1), idx)
    assert "aten._scaled_dot_product_flash_attention_for_cpu" in fused.by_op
    assert "aten._scaled_dot_product_flash_attention_for_cpu" not in math_path.by_op
    assert fused.total == math_path.total


def test_gqa_and_gpu_backward_formulas_follow_the_model_flops_convention():
    q, kv = (2, 8, 16, 32), (2, 2, 16, 32)
    fwd = 2 * (2 * 2 * 8 * 16 * 16 * 32)  # two matmuls over all 8 query heads
    assert attention_flops(q, kv, kv) == fwd
    x = torch.randn(*q, requires_grad=True)
    k = torch.randn(*kv, requires_grad=True)
    _, n = count_flops(lambda: F.scaled_dot_product_attention(x, k, k, enable_gqa=True).sum().backward())
    assert n.total == 3 * fwd
    # torch's CUDA flash backward formula counts the recompute; ours does not (same as CPU)
    grad_out = q
    assert FLOP_FORMULAS[aten._scaled_dot_product_flash_attention_backward](grad_out, q, kv, kv) == 2 * fwd


# --- LSTM on CPU (mkldnn_rnn_layer, counted zero by torch 2.13) ----------------------------------

def test_lstm_counted_per_gate_by_hand():
    T, B, I, Hd, layers = 10, 4, 16, 32, 2
    lstm = nn.LSTM(I, Hd, num_layers=layers, batch_first=True)
    x = torch.randn(B, T, I)
    # 4 gates: x_t @ W_ih^T (4H x I) and h_{t-1} @ W_hh^T (4H x H) every step
    per_layer_in = [I, Hd]
    fwd = sum(2 * T * B * (4 * Hd * i + 4 * Hd * Hd) for i in per_layer_in)
    assert forward_flops(lstm, x).total == fwd
    assert train_step_flops(lstm, x).total == 3 * fwd


# --- cache, side effects, warnings ---------------------------------------------------------------

def test_cache_counts_once_per_shape():
    calls = []

    class Counting(nn.Linear):
        def forward(self, x):
            calls.append(tuple(x.shape))
            return super().forward(x)

    cache = FlopCache(Counting(8, 4, bias=False))
    assert cache.train_step(torch.randn(5, 8)) == 3 * 2 * 5 * 8 * 4 - 2 * 5 * 8 * 4
    cache.train_step(torch.randn(5, 8))
    assert len(calls) == 1
    assert cache.train_step(torch.randn(7, 8)) == 2 * 2 * 7 * 8 * 4
    assert cache.forward(torch.randn(7, 8)) == 2 * 7 * 8 * 4
    assert len(calls) == 3 and len(cache) == 3
    with pytest.raises(ValueError, match="kind"):
        cache.count("backward", torch.randn(7, 8))


def test_counting_leaves_grads_buffers_and_rng_untouched():
    net = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.Dropout(0.5), nn.Linear(8, 2)).train()
    stats = net[1].running_mean.clone(), net[1].running_var.clone(), net[1].num_batches_tracked.clone()
    x = torch.randn(16, 4) * 5 + 3
    old_grad = torch.full_like(net[0].weight, 7.0)
    net[0].weight.grad = old_grad
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    train_step_flops(net, x)
    assert torch.equal(torch.rand(3), expected)
    assert net[0].weight.grad is old_grad and bool((old_grad == 7.0).all())
    assert all(p.grad is None for name, p in net.named_parameters() if name != "0.weight")
    for before, after in zip(stats, (net[1].running_mean, net[1].running_var, net[1].num_batches_tracked)):
        assert torch.equal(before, after)


def test_fused_fast_path_is_flagged_and_forward_flops_avoids_it():
    enc = nn.TransformerEncoderLayer(32, 4, 64, batch_first=True).eval()
    x = torch.randn(2, 8, 32)
    with torch.no_grad():
        _, fast = count_flops(enc, x)
    assert fast.total == 0 and "fast path" in fast.warnings[0]
    counted = forward_flops(enc, x)
    assert counted.warnings == ()
    # projections 4*d*d + feed-forward 2*d*ff per token, attention 4*T*d per sequence position
    tokens, d, ff, T = 2 * 8, 32, 64, 8
    assert counted.total == 2 * tokens * (4 * d * d + 2 * d * ff) + 4 * tokens * T * d


def test_default_loss_needs_a_float_output():
    class Ints(nn.Module):
        def __init__(self):
            super().__init__()
            self.w = nn.Parameter(torch.ones(1))

        def forward(self, x):
            return x.long()

    with pytest.raises(TypeError, match="loss_fn"):
        train_step_flops(Ints(), torch.ones(2))


def test_custom_loss_fn_and_dict_outputs():
    class Two(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Linear(4, 3, bias=False), nn.Linear(4, 5, bias=False)

        def forward(self, x):
            return {"a": self.a(x), "b": self.b(x)}

    x = torch.randn(2, 4)
    both = train_step_flops(Two(), x).total
    only_a = train_step_flops(Two(), x, loss_fn=lambda out: out["a"].sum()).total
    assert both == 2 * (2 * 2 * 4 * 3 + 2 * 2 * 4 * 5)
    # b's forward still runs (counted); its weight gets no gradient
    assert only_a == 2 * 2 * 4 * 3 * 2 + 2 * 2 * 4 * 5
