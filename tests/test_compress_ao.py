"""torchao int8 (ao-weight, ao-dynamic): weights within half a step of fp32 with the row scale computed
here, outputs close to fp32, the saved model reloads bit for bit and evaluates as quantize() did, the
report's latency at batch 1 and 64 and its 'slower' verdict agree, and a missing torchao is one line."""
import json
import sys

import pytest
import torch
from torch import nn

import powertrain
from powertrain.shrink import load_model, quantize
from powertrain.models.int8.ao import quantize_ao
from powertrain.models.int8 import quantize_model
from powertrain.shrink.quantize import format_report
from powertrain.errors import MissingExtra


@pytest.fixture(scope="module")
def mlp_run(tmp_path_factory):
    return powertrain.train("digits-mlp", ["train.max_steps=40"], out=tmp_path_factory.mktemp("ao") / "mlp",
                            callbacks=[]).dir


@pytest.mark.parametrize("mode", ["ao-weight", "ao-dynamic"])
def test_int8_rows_within_half_a_step_and_outputs_close(mode):
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, 10))
    q = quantize_ao(net, mode)
    for i in (0, 2):
        w, qw = net[i].weight.detach(), q[i].weight
        scale = w.abs().amax(1, keepdim=True) / 127.5  # symmetric int8, one scale per output row
        assert torch.allclose(qw.scale.reshape(-1, 1), scale, rtol=1e-6)
        assert qw.qdata.dtype == torch.int8
        assert ((qw.qdata.float() * scale - w).abs() <= scale * 0.5001).all()
    x = torch.randn(128, 32)
    with torch.no_grad():
        a, b = net(x), q(x)
    assert (a - b).abs().max() <= 0.02 * a.abs().max()
    assert isinstance(net[0].weight, nn.Parameter) and net[0].weight.dtype == torch.float32  # the original untouched


@pytest.mark.parametrize("mode", ["ao-weight", "ao-dynamic"])
def test_ao_run_reloads_exactly_and_reports_both_batches(mlp_run, mode, tmp_path):
    child = quantize(mlp_run, mode=mode, out=tmp_path / "q", repeats=3, warmup=1)
    report = json.loads((child / "derived.json").read_text())["report"]
    assert report["size_ratio"] >= 3 and [r.split()[0] for r in report["quantized_layers"]] == ["1", "4", "7"]
    fp32, _, trainer = load_model(mlp_run)
    int8, _, _ = load_model(child)  # the recipe's model, quantized again, filled from the file
    x = trainer.data.test.tensors[0][:100]
    with torch.no_grad():
        assert torch.equal(int8(x), quantize_model(fp32, mode)(x))
        assert (int8(x).argmax(1) == fp32(x).argmax(1)).float().mean() >= 0.95
    saved = json.loads((child / "eval.json").read_text())["test"]
    assert powertrain.evaluate(child)["accuracy"] == pytest.approx(saved["accuracy"])
    cost = report["inference"]
    slower_at = [b for b in ("1", "64") if cost["int8"]["latency_s"][b] > cost["fp32"]["latency_s"][b]]
    assert [s.split(":")[0] for s in report["slower"]] == [f"batch {b}" for b in slower_at]
    assert ("INT8 IS SLOWER" in format_report(report)) == bool(slower_at)
    assert cost["int8"]["j_per_sample"] > 0 and cost["int8"]["energy_method"]
    assert json.loads((child / "derived.json").read_text())["settings"]["library"] == "torchao"


def test_missing_torchao_is_one_line(mlp_run, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "torchao.quantization", None)
    with pytest.raises(MissingExtra, match=r"pip install 'powertrain\[shrink\]'"):
        quantize(mlp_run, mode="ao-weight", out=tmp_path / "q")
