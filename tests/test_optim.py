"""LR schedules: our closed forms against torch's own schedulers, step by step."""
import pytest
import torch

from powertrain.train.optim import build_optimizer, build_scheduler, lr_factor
from powertrain.recipe import TrainConfig

TOTAL = 200


def ours(cfg: TrainConfig, total=TOTAL):
    return [cfg.lr * lr_factor(cfg, total, s) for s in range(total)]


def torch_lrs(make_sched, lr=0.1, total=TOTAL):
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=lr)
    sched = make_sched(opt)
    out = []
    for _ in range(total):
        out.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return out


S = torch.optim.lr_scheduler


@pytest.mark.parametrize("cfg,make", [
    (dict(schedule="step", step_size=30, gamma=0.5), lambda o: S.StepLR(o, 30, 0.5)),
    (dict(schedule="cosine", min_lr=0.01), lambda o: S.CosineAnnealingLR(o, TOTAL, eta_min=0.01)),
    (dict(schedule="cosine_restarts", restart_steps=50), lambda o: S.CosineAnnealingWarmRestarts(o, 50)),
    (dict(schedule="cosine_restarts", restart_steps=20, restart_mult=2, min_lr=0.001),
     lambda o: S.CosineAnnealingWarmRestarts(o, 20, T_mult=2, eta_min=0.001)),
    (dict(schedule="onecycle", pct_start=0.25),
     lambda o: S.OneCycleLR(o, 0.1, total_steps=TOTAL, pct_start=0.25, cycle_momentum=False)),
    (dict(warmup_steps=40), lambda o: S.LinearLR(o, start_factor=1 / 40, end_factor=1.0, total_iters=39)),
])
def test_schedule_matches_torch(cfg, make):
    expected = torch_lrs(make)
    got = ours(TrainConfig(lr=0.1, **cfg))
    assert got == pytest.approx(expected, rel=1e-6, abs=1e-9)


def test_warmup_multiplies_cosine():
    cfg = TrainConfig(lr=0.1, schedule="cosine", warmup_steps=10)
    cos = torch_lrs(lambda o: S.CosineAnnealingLR(o, TOTAL))
    got = ours(cfg)
    assert got[:10] == pytest.approx([c * (i + 1) / 10 for i, c in enumerate(cos[:10])])
    assert got[10:] == pytest.approx(cos[10:])


def test_scheduler_drives_optimizer_and_constant_has_none():
    p = torch.nn.Parameter(torch.zeros(1))
    cfg = TrainConfig(lr=0.1, schedule="step", step_size=2, gamma=0.1, optimizer="sgd")
    opt = build_optimizer([p], cfg)
    sched = build_scheduler(opt, cfg, 10)
    seen = []
    for _ in range(5):
        seen.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert seen == pytest.approx([0.1, 0.1, 0.01, 0.01, 0.001])
    assert build_scheduler(opt, TrainConfig(), 10) is None


@pytest.mark.parametrize("name,cls", [("sgd", torch.optim.SGD), ("adam", torch.optim.Adam),
                                      ("adamw", torch.optim.AdamW), ("rmsprop", torch.optim.RMSprop)])
def test_optimizers(name, cls):
    cfg = TrainConfig(optimizer=name, lr=0.01, weight_decay=0.1, momentum=0.9 if name in ("sgd", "rmsprop") else 0,
                      nesterov=name == "sgd")
    opt = build_optimizer([torch.nn.Parameter(torch.ones(2))], cfg)
    assert isinstance(opt, cls) and opt.defaults["weight_decay"] == 0.1
    if name == "sgd":
        assert opt.defaults["nesterov"] and opt.defaults["momentum"] == 0.9
