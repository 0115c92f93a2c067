"""The engine against a plain PyTorch loop, and its behaviours: accumulation, seeds, early stopping,
NaN handling, shape checks, compute_loss override, DataLoader path, precision."""
import math

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

import powertrain
from powertrain import Callback, TrainConfig, Trainer, data, models
from powertrain.errors import NonFiniteLoss, RecipeError
from powertrain.models.check import ShapeError
from seed_models import ConvNet


class Losses(Callback):
    def __init__(self):
        self.values = []

    def on_step_end(self, trainer, loss):
        self.values.append(loss)


def make_mlp(meta, seed=0):
    torch.manual_seed(seed)
    return models.build({"name": "mlp", "hidden": [32]}, meta)


def plain_loop(model, x, y, cfg: TrainConfig, seed: int, make_sched=None):
    """A textbook PyTorch loop with the engine's documented data order."""
    opt = {"adam": lambda p: torch.optim.Adam(p, lr=cfg.lr),
           "sgd": lambda p: torch.optim.SGD(p, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov)}[cfg.optimizer](
        model.parameters())
    sched = make_sched(opt) if make_sched else None
    losses = []
    for epoch in range(cfg.epochs):
        order = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed * 1_000_003 + epoch))
        for i in range(0, len(x), cfg.batch_size):
            idx = order[i:i + cfg.batch_size]
            opt.zero_grad()
            loss = F.cross_entropy(model(x[idx]), y[idx])
            loss.backward()
            if cfg.grad_clip:
                torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            opt.step()
            if sched:
                sched.step()
            losses.append(loss.item())
    return losses


@pytest.mark.parametrize("kw,make_sched", [
    (dict(optimizer="adam", lr=1e-3), None),
    (dict(optimizer="sgd", lr=0.05, momentum=0.9, nesterov=True, grad_clip=0.5, schedule="step", step_size=7, gamma=0.5),
     lambda o: torch.optim.lr_scheduler.StepLR(o, 7, 0.5)),
])
def test_trainer_equals_plain_loop(tiny_digits, kw, make_sched):
    cfg = TrainConfig(epochs=2, batch_size=64, device="cpu", precision="fp32", **kw)  # the plain loop's device and dtype
    x, y = tiny_digits.train.tensors
    ref = make_mlp(tiny_digits.meta)
    ref_losses = plain_loop(ref, x, y, cfg, seed=3, make_sched=make_sched)
    rec = Losses()
    t = Trainer(make_mlp(tiny_digits.meta), tiny_digits, cfg, callbacks=[rec], seed=3).fit()
    assert rec.values == ref_losses  # bit for bit
    for a, b in zip(t.model.state_dict().values(), ref.state_dict().values()):
        assert torch.equal(a, b)


def test_accumulation_equals_full_batch(tiny_digits):
    """In fp32 on the CPU: to 1e-5 (bf16 autocast or TF32 on a GPU would round the two differently)."""
    cpu = dict(device="cpu", precision="fp32")
    full = Trainer(make_mlp(tiny_digits.meta), tiny_digits,
                   TrainConfig(epochs=1, batch_size=64, optimizer="sgd", lr=0.1, **cpu), callbacks=[]).fit()
    acc = Trainer(make_mlp(tiny_digits.meta), tiny_digits,
                  TrainConfig(epochs=1, batch_size=64, accumulate=4, optimizer="sgd", lr=0.1, **cpu), callbacks=[]).fit()
    for a, b in zip(full.model.parameters(), acc.model.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_same_seed_same_bits(tmp_path):
    """The same bits are promised on the CPU (engine.py); CUDA kernels need not be deterministic."""
    runs = [powertrain.train("digits-mlp", ["train.epochs=2", "train.device=cpu"], out=tmp_path / f"r{i}", callbacks=[]) for i in range(2)]
    w = [load_file(str(r.trainer.last_checkpoint / "model.safetensors")) for r in runs]
    assert w[0].keys() == w[1].keys() and all(torch.equal(w[0][k], w[1][k]) for k in w[0])
    assert runs[0].metrics == runs[1].metrics


def test_early_stopping_restores_best(tmp_path):
    run = powertrain.train("digits-mlp", ["train.epochs=60", "train.lr=0.02",
                                          "train.early_stop={metric: loss, patience: 2}"],
                           out=tmp_path / "es", callbacks=[])
    t = run.trainer
    assert t.stop_reason.startswith("early stop") and t.step < t.total_steps
    best = load_file(str(tmp_path / "es/checkpoints/best.safetensors"))
    assert all(torch.equal(best[k], v.cpu()) for k, v in t.model.state_dict().items() if k in best)  # any device
    assert run.metrics["val"]["loss"] == pytest.approx(t.best["value"])


def test_nan_loss_stops_with_step_and_keeps_checkpoint(tiny_digits, tmp_path):
    cfg = TrainConfig(epochs=50, optimizer="sgd", lr=1e6, checkpoint_every_steps=1)
    t = Trainer(make_mlp(tiny_digits.meta), tiny_digits, cfg, run_dir=tmp_path, callbacks=[])
    with pytest.raises(NonFiniteLoss, match=r"at step \d+ .*lower train.lr"):
        t.fit()
    kept = load_file(str(t.last_checkpoint / "model.safetensors"))
    assert all(torch.isfinite(v).all() for v in kept.values())


def test_documents_convnet_shape_bug_is_caught_before_training():
    x, y = torch.randn(98, 1, 28, 28), torch.randint(0, 10, (98,))
    bundle = data.DataBundle.from_tensors((x, y), num_classes=10)
    with pytest.raises(ShapeError, match=r"layer 'fc1' expects in_features=3136.* 1600 values per sample"):
        Trainer(ConvNet(), bundle, TrainConfig(batch_size=49), callbacks=[])
    t = Trainer(ConvNet(padding=1), bundle, TrainConfig(epochs=1, batch_size=49), callbacks=[]).fit()
    assert t.step == 2


def test_compute_loss_override(tiny_digits):
    class ZeroLoss(Trainer):
        def compute_loss(self, batch, outputs):
            return (outputs * 0).sum()

    model = make_mlp(tiny_digits.meta)
    before = [p.detach().clone() for p in model.parameters()]
    ZeroLoss(model, tiny_digits, TrainConfig(epochs=1), callbacks=[]).fit()  # on any device: zero gradients move nothing
    assert all(torch.equal(a, b.detach().cpu()) for a, b in zip(before, model.parameters()))


def test_dataloader_path_equals_in_memory():
    cfg = TrainConfig(epochs=1, batch_size=50, device="cpu")  # bit for bit: the CPU's promise
    results = []
    for in_memory in (True, False):
        bundle = data.build({"name": "digits", "in_memory": in_memory}, seed=0)
        rec = Losses()
        Trainer(make_mlp(bundle.meta), bundle, cfg, callbacks=[rec]).fit()
        results.append(rec.values)
    assert results[0] == results[1]


def test_precision_auto_is_fp32_on_cpu(tiny_digits):
    from powertrain.measure.hardware import cpu_has_native_bf16

    t = Trainer(make_mlp(tiny_digits.meta), tiny_digits, TrainConfig(max_steps=2, device="cpu"), callbacks=[])
    assert t.precision == "fp32"
    bf16 = TrainConfig(max_steps=3, precision="bf16", device="cpu")
    if cpu_has_native_bf16():
        bf = Trainer(make_mlp(tiny_digits.meta), tiny_digits, bf16, callbacks=[])
    else:
        with pytest.warns(UserWarning, match="emulates bf16"):
            bf = Trainer(make_mlp(tiny_digits.meta), tiny_digits, bf16, callbacks=[])
    rec = Losses()
    bf.callbacks = [rec]
    bf.fit()
    assert bf.precision == "bf16" and len(rec.values) == 3 and all(math.isfinite(v) for v in rec.values)


def test_compile_opt_in(tiny_digits):
    rec = Losses()
    t = Trainer(make_mlp(tiny_digits.meta), tiny_digits, TrainConfig(max_steps=3, compile=True), callbacks=[rec]).fit()
    assert t.forward_model is not t.model and len(rec.values) == 3


def test_a_compile_mode_reaches_torch_compile_and_a_bad_one_is_one_line(tiny_digits, monkeypatch):
    seen = []
    monkeypatch.setattr(torch, "compile", lambda m, **kw: seen.append(kw) or m)
    Trainer(make_mlp(tiny_digits.meta), tiny_digits, TrainConfig(max_steps=1, compile="reduce-overhead"), callbacks=[])
    Trainer(make_mlp(tiny_digits.meta), tiny_digits, TrainConfig(max_steps=1, compile=True), callbacks=[])
    assert seen == [{"mode": "reduce-overhead"}, {}]
    for bad in ("fast", 1):
        with pytest.raises(RecipeError, match=r"^train\.compile: expected true, false or a torch\.compile mode"):
            powertrain.load_recipe("digits-mlp", [f"train.compile={bad}"])


def test_under_ddp_training_runs_the_compiled_module_and_evaluation_the_eager_one(monkeypatch):
    """A job's strategy (no process group needed: the DDP wrapper is stood in by the model itself) routes the
    forward pass by the model's mode, as the one-process Trainer does: no eval-mode graph is ever compiled."""
    from powertrain.train import distributed, strategy

    calls = []

    class Compiled(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, x):
            calls.append("compiled")
            return self.inner(x)

    monkeypatch.setattr(torch, "compile", lambda m, **kw: Compiled(m))
    monkeypatch.setattr(distributed, "seed_rank", lambda seed, rank: None)
    s = strategy.DDP(distributed.Dist("ddp", rank=0, world_size=2))
    monkeypatch.setattr(s, "_wrap_model", lambda model, device, precision: model)
    model = torch.nn.Linear(3, 2)
    forward = s.wrap(model, True, torch.device("cpu"), "fp32", 0)
    x = torch.randn(4, 3)
    forward(x)
    model.eval()
    assert torch.equal(forward(x), model(x)) and calls == ["compiled"]
    model.train()
    forward(x)
    assert calls == ["compiled", "compiled"]
