"""What the Trainer does differently on a GPU, checked on the CPU with fakes: fused optimizers, TF32
matmuls stated on the bill (and MFU against TF32's peak), and torch.compile's first step billed apart."""
import pytest
import torch

import powertrain
from powertrain import TrainConfig, Trainer, models
from powertrain.measure.bill import BillRecord, make_bill
from powertrain.measure.hardware import use_tf32
from powertrain.measure import Meter
from powertrain.train.optim import build_optimizer


@pytest.mark.parametrize("name", ["sgd", "adam", "adamw"])
def test_fused_optimizers_when_asked(name):
    params = [torch.nn.Parameter(torch.zeros(3))]
    assert build_optimizer(params, TrainConfig(optimizer=name), fused=True).defaults["fused"] is True
    assert not build_optimizer(params, TrainConfig(optimizer=name)).defaults.get("fused")


def test_cpu_training_stays_unfused(tiny_digits):
    model = models.build({"name": "mlp", "hidden": [8]}, tiny_digits.meta)
    t = Trainer(model, tiny_digits, TrainConfig(max_steps=1, optimizer="adamw", device="cpu"), callbacks=[],
                meter=False)
    assert not t.optimizer.defaults.get("fused") and t.tf32 is False


def test_tf32_on_ampere_and_newer_only(monkeypatch):
    was = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    try:
        monkeypatch.setattr(torch.cuda, "get_device_capability", lambda d=None: (7, 0))
        assert not use_tf32(torch.device("cuda"), "fp32") and not torch.backends.cuda.matmul.allow_tf32
        monkeypatch.setattr(torch.cuda, "get_device_capability", lambda d=None: (9, 0))
        assert not use_tf32(torch.device("cuda"), "bf16")
        assert use_tf32(torch.device("cuda"), "fp32") and torch.backends.cuda.matmul.allow_tf32
        assert not use_tf32(torch.device("cpu"), "fp32")
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = was


def test_the_bill_states_tf32_and_uses_its_peak(monkeypatch):
    import powertrain.measure.bill as bill_module
    from powertrain.measure import Peak

    asked = []

    def fake_peak(device, dtype, **kw):
        asked.append(dtype)
        return Peak("NVIDIA H100 SXM", dtype, {"tf32": 494.7e12, "fp32": 67e12}[dtype], "datasheet (fake)")

    monkeypatch.setattr(bill_module, "peak_for", fake_peak)
    monkeypatch.setattr(bill_module, "peak_memory", lambda device: type("M", (), {"to_dict": lambda s: {}})())
    m = Meter()
    with m.window("fit"):
        m.add_flops(10**12)
    bill = make_bill(m, BillRecord(params=1, device="cuda", precision="fp32", tf32=True))
    assert asked == ["tf32"] and bill["device"]["tf32"] is True and bill["mfu"]["peak"]["dtype"] == "tf32"


def test_the_first_compiled_step_is_billed_apart(tiny_digits, monkeypatch):
    monkeypatch.setattr(torch, "compile", lambda model, **kw: model)  # the window logic, not inductor's 13 s
    model = models.build({"name": "mlp", "hidden": [8]}, tiny_digits.meta)
    t = Trainer(model, tiny_digits, TrainConfig(max_steps=5, compile=True), callbacks=[]).fit()
    windows = t.meter.totals()
    assert windows["compile"].count == 1
    bill = t.bill()
    assert bill["time_s"]["compile"] == pytest.approx(windows["compile"].time_s)
    assert "first step with compilation" in powertrain.measure.bill.format_bill(bill)
