"""Mistakes a user can make end in one line that names the file, key or setting, what was expected and
the fix (exit status 2 from the CLI), never in a traceback; caches that went bad are rebuilt, not fatal."""
import errno
import json
import subprocess
import sys
import warnings

import numpy as np
import pytest
import torch
from torch import nn

from powertrain import cli, settings
from powertrain.data import DataBundle, DataMeta, TensorSplit
from powertrain.errors import DataError, ModelError, RecipeError, SettingError
from powertrain.measure import peak
from powertrain.train.metrics import TaskMetrics, metric_names
from powertrain.models.check import check_fit


def one_line_error(capsys, argv, code=2) -> str:
    """Run the CLI in-process; assert it failed with `code` and one line on stderr; return that line."""
    assert cli.main(argv) == code
    err = capsys.readouterr().err
    assert err.startswith("powertrain: error: ") and err.count("\n") == 1 and "Traceback" not in err, err
    return err


# --- 1. options and overrides in any order -------------------------------------------------------

@pytest.mark.parametrize("argvs, expected", [
    ([["train", "digits-mlp", "--nproc", "2", "train.epochs=1", "--out", "o"],
      ["train", "--nproc", "2", "--out", "o", "digits-mlp", "train.epochs=1"],
      ["train", "digits-mlp", "train.epochs=1", "--nproc", "2", "--out", "o"],
      ["train", "--nproc", "2", "digits-mlp", "--out", "o", "train.epochs=1"]],
     {"recipe": "digits-mlp", "overrides": ["train.epochs=1"], "nproc": 2, "out": "o"}),
    ([["resume", "runs/a", "--nproc", "2", "train.epochs=3", "train.lr=1"],
      ["resume", "--nproc", "2", "runs/a", "train.epochs=3", "train.lr=1"],
      ["resume", "runs/a", "train.epochs=3", "--nproc", "2", "train.lr=1"]],
     {"run_dir": "runs/a", "overrides": ["train.epochs=3", "train.lr=1"], "nproc": 2}),
    ([["distill", "--teacher", "t", "s", "a.b=1", "--alpha", "0.3", "c.d=2"],
      ["distill", "s", "a.b=1", "c.d=2", "--teacher", "t", "--alpha", "0.3"],
      ["distill", "s", "--alpha", "0.3", "a.b=1", "--teacher", "t", "c.d=2"]],
     {"recipe": "s", "overrides": ["a.b=1", "c.d=2"], "teacher": "t", "alpha": "0.3"}),
    ([["prune", "runs/a", "--sparsity", "0.5"], ["prune", "--sparsity", "0.5", "runs/a"]],
     {"run_dir": "runs/a", "sparsity": "0.5"}),
    ([["eval", "runs/a", "--split", "val"], ["eval", "--split", "val", "runs/a"]], {"run_dir": "runs/a", "split": "val"}),
])
def test_options_before_between_and_after_overrides_parse_the_same(argvs, expected):
    for argv in argvs:
        args = vars(cli.parser().parse_args(argv))
        assert {k: args[k] for k in expected} == expected, argv


def test_train_with_only_options_keeps_the_default_recipe():
    args = cli.parser().parse_args(["train", "--out", "o"])
    assert (args.recipe, args.overrides, args.out) == ("mnist1d-cnn", [], "o")


# --- 2. a closed pipe ends quietly ---------------------------------------------------------------

def test_closed_pipe_ends_quietly():
    """`powertrain regions | head -0`: the reader is gone before the first write."""
    p = subprocess.Popen([sys.executable, "-m", "powertrain", "regions"], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE)
    p.stdout.close()  # before the interpreter has even imported powertrain
    _, err = p.communicate(timeout=120)
    assert err == b"", err.decode()
    assert p.returncode == 141


# --- 3. OS errors: one line naming the path, the cause and the fix ------------------------------

@pytest.mark.parametrize("code, words", [
    (errno.ENOSPC, ["no space left", "free some space"]),
    (errno.EROFS, ["read-only", "writable folder with --out"]),
    (errno.EACCES, ["permission denied", "--out"]),
])
def test_os_errors_are_one_line(capsys, monkeypatch, code, words):
    from powertrain.train import lifecycle

    def full_disk(*args, **kwargs):
        raise OSError(code, "strerror", "/data/runs/x/checkpoints/step-00000040.tmp")

    monkeypatch.setattr(lifecycle, "train", full_disk)
    err = one_line_error(capsys, ["train", "xor"])
    assert "'/data/runs/x/checkpoints/step-00000040.tmp'" in err
    assert all(w in err for w in words), err


def test_out_naming_an_existing_file_is_one_line(capsys, tmp_path):
    afile = tmp_path / "afile"
    afile.write_text("not a folder")
    err = one_line_error(capsys, ["train", "xor", "train.max_steps=1", "--out", str(afile)])
    assert str(afile) in err and "file" in err and "folder" in err, err


# --- 4. a binary file as a recipe ---------------------------------------------------------------

def test_binary_recipe_files_are_one_line(capsys, tmp_path):
    junk = tmp_path / "junk.yaml"
    junk.write_bytes(bytes([0x8F, 0xFF, 0x00, 0x13]) + np.random.default_rng(0).bytes(200))
    err = one_line_error(capsys, ["train", str(junk)])
    assert f"recipe file '{junk}': not a text YAML recipe" in err
    err = one_line_error(capsys, ["train", sys.executable])  # an executable, without a .yaml suffix
    assert "not a text YAML recipe" in err and "not a file" not in err
    nul = tmp_path / "nul.yaml"
    nul.write_bytes(b"data: {name: xor}\x00\x00\x00")  # valid UTF-8, but binary
    with pytest.raises(RecipeError, match="not a text YAML recipe"):
        from powertrain import load_recipe
        load_recipe(nul)


# --- 5. numeric environment settings are checked when read ---------------------------------------

@pytest.mark.parametrize("value", ["abc", "-5", "0", "nan", "inf"])
def test_cpu_w_per_core_must_be_a_finite_positive_number(monkeypatch, value):
    from powertrain.measure import EstimateBackend, cpu_w_per_core

    monkeypatch.setenv("POWERTRAIN_CPU_W_PER_CORE", value)
    for read in (settings.cpu_w_per_core, cpu_w_per_core, EstimateBackend):
        with pytest.raises(SettingError, match=f"POWERTRAIN_CPU_W_PER_CORE='{value}': expected a finite number > 0"):
            read()


def test_cpu_w_per_core_setting_is_used(monkeypatch):
    from powertrain.measure import cpu_w_per_core

    monkeypatch.setenv("POWERTRAIN_CPU_W_PER_CORE", " 2.5 ")
    assert cpu_w_per_core("any cpu")[0] == 2.5
    monkeypatch.setenv("POWERTRAIN_CPU_W_PER_CORE", "")  # blank: unset
    assert settings.cpu_w_per_core() is None


def test_bad_setting_stops_the_cli_in_one_line(capsys, monkeypatch, tmp_path):
    monkeypatch.setenv("POWERTRAIN_CPU_W_PER_CORE", "abc")
    err = one_line_error(capsys, ["train", "xor", "train.max_steps=1", "--out", str(tmp_path / "run")])
    assert "POWERTRAIN_CPU_W_PER_CORE" in err and "unset it" in err


# --- 6. one cache folder --------------------------------------------------------------------------

def test_one_cache_dir_setting_for_peaks_and_datasets(monkeypatch, tmp_path):
    from powertrain.data import mnist1d

    monkeypatch.delenv("POWERTRAIN_CACHE", raising=False)
    monkeypatch.setenv("POWERTRAIN_CACHE_DIR", str(tmp_path / "c"))
    assert settings.cache_dir() == peak.cache_dir() == mnist1d.cache_dir() == tmp_path / "c"
    from powertrain.data.images import data_root

    monkeypatch.delenv("POWERTRAIN_DATA", raising=False)
    assert settings.data_dir() == data_root() == tmp_path / "c" / "datasets"
    monkeypatch.delenv("POWERTRAIN_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert mnist1d.cache_dir() == tmp_path / "xdg" / "powertrain"


def test_old_cache_name_is_a_deprecated_alias(monkeypatch, tmp_path):
    monkeypatch.delenv("POWERTRAIN_CACHE_DIR", raising=False)
    monkeypatch.setenv("POWERTRAIN_CACHE", str(tmp_path / "old"))
    monkeypatch.setattr(settings, "_warned", set())
    with pytest.warns(FutureWarning, match="POWERTRAIN_CACHE_DIR"):
        assert peak.cache_dir() == tmp_path / "old"
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # once only
        assert settings.cache_dir() == tmp_path / "old"
    monkeypatch.setenv("POWERTRAIN_CACHE_DIR", str(tmp_path / "new"))  # the new name wins
    assert settings.cache_dir() == tmp_path / "new"


# --- 7. a damaged peak cache is rebuilt ------------------------------------------------------------

@pytest.fixture
def fake_measure(monkeypatch):
    calls = []

    def measure(dtype="fp32"):
        calls.append(dtype)
        return peak.Peak("cpu: test", dtype, 1e11, "measured: fake")

    monkeypatch.setattr(peak, "measure_cpu_peak", measure)
    monkeypatch.setattr(peak, "busy_reason", lambda before, after: "")
    return calls


@pytest.mark.parametrize("damage", [
    '{"host|cpu|fp32": {"device": "cpu", "dt',  # truncated
    "\x00\x17garbage",
    "[1, 2, 3]",  # JSON, but not an object
    "entry without flops_per_s",
])
def test_damaged_peak_cache_is_ignored_and_rebuilt(tmp_path, fake_measure, damage):
    path = tmp_path / "peak.json"
    if damage == "entry without flops_per_s":
        damage = json.dumps({peak._machine_key("fp32"): {"device": "cpu", "dtype": "fp32", "source": "x"}})
    path.write_text(damage)
    with pytest.warns(UserWarning, match=f"peak cache '{path}' is damaged"):
        assert peak.peak_for("cpu", "fp32", cache=path, measure=False) is None
    with pytest.warns(UserWarning, match="is damaged"):
        p = peak.cpu_peak("fp32", cache=path)
    assert p.flops_per_s == 1e11 and fake_measure == ["fp32"]
    assert json.loads(path.read_text())[peak._machine_key("fp32")]["flops_per_s"] == 1e11  # rewritten, whole
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert peak.cpu_peak("fp32", cache=path) == p and fake_measure == ["fp32"]


def test_unwritable_peak_cache_costs_a_warning_not_the_run(tmp_path, fake_measure):
    afile = tmp_path / "afile"
    afile.write_text("")
    with pytest.warns(UserWarning, match="not written"):
        assert peak.cpu_peak("fp32", cache=afile / "peak.json").flops_per_s == 1e11


# --- 8. a peak measured while the CPU is busy is used once, not cached ----------------------------

def test_peak_measured_while_busy_is_not_cached(tmp_path, fake_measure, monkeypatch):
    monkeypatch.setattr(peak, "busy_reason", lambda before, after: "other processes used 1.50 of 2 CPUs")
    path = tmp_path / "peak.json"
    p = peak.cpu_peak("fp32", cache=path)
    assert p.flops_per_s == 1e11 and "measured while busy: not cached" in p.source and "1.50 of 2" in p.source
    assert not path.exists()
    peak.cpu_peak("fp32", cache=path)
    assert fake_measure == ["fp32", "fp32"]  # measured again: nothing was kept
    monkeypatch.setattr(peak, "busy_reason", lambda before, after: "")
    assert "busy" not in peak.cpu_peak("fp32", cache=path).source and path.exists()


def test_busy_is_other_processes_cpu_time_over_the_window():
    s = peak.CpuSample
    assert peak.busy_reason(s(0, 0, 0), s(2.0, 3.9, 4.0), threads=2, cpus=2) == ""  # all of it was ours
    assert "0.80 of 2 CPUs" in peak.busy_reason(s(0, 0, 0), s(2.0, 2.0, 3.6), threads=2, cpus=2)
    assert peak.busy_reason(s(0, 0, 0), s(2.0, 2.0, 3.6), threads=2, cpus=8) == ""  # others had free CPUs
    assert peak.busy_reason(s(0, 0, 0), s(0.05, 0, 0.1), threads=2, cpus=2) == ""  # too short to judge
    now = peak.cpu_sample()
    assert now.all_busy_s is None or now.all_busy_s > 0


# --- 9. a truncated mnist1d cache is rebuilt --------------------------------------------------------

def test_truncated_mnist1d_cache_is_deleted_and_rebuilt(tmp_path, monkeypatch):
    from powertrain.data import mnist1d

    monkeypatch.setenv("POWERTRAIN_CACHE_DIR", str(tmp_path))
    path = tmp_path / "mnist1d-default.npz"
    np.savez(path, x=np.zeros((50, 40)), y=np.zeros(50), x_test=np.zeros((5, 40)), y_test=np.zeros(5))
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.warns(UserWarning, match=f"mnist1d cache '{path}' is damaged"):
        arrays = mnist1d._arrays()
    assert arrays["x"].shape == (4000, 40) and arrays["y_test"].shape == (1000,)
    with np.load(path) as f:  # rebuilt whole
        assert f["x"].shape == (4000, 40)


# --- 10. data of mismatched lengths, empty splits -----------------------------------------------------

def test_x_and_y_of_different_lengths():
    with pytest.raises(DataError, match=r"train split's tensors differ in length \(x has 100 and y has 99"):
        DataBundle.from_tensors((torch.randn(100, 3), torch.zeros(99, dtype=torch.long)))
    with pytest.raises(DataError, match=r"test split.*x has 4 and y has 5"):
        DataBundle.from_tensors((torch.randn(4, 3), torch.zeros(4, dtype=torch.long)),
                                test=(torch.randn(4, 3), torch.zeros(5, dtype=torch.long)))


@pytest.mark.parametrize("which", ["train", "val"])
def test_empty_split_is_named(which):
    full, empty = (torch.randn(4, 3), torch.arange(4) % 2), (torch.randn(0, 3), torch.zeros(0, dtype=torch.long))
    kw = {"train": empty if which == "train" else full, "val": empty if which == "val" else None}
    with pytest.raises(DataError, match=f"the {which} split is empty"):
        DataBundle.from_tensors(kw["train"], val=kw["val"], num_classes=2)


# --- 11. check_fit: the model and the data fit together ------------------------------------------------

def bundle(y_train, num_classes=10, task="multiclass", x=None, val=None):
    x = torch.randn(len(y_train), 8) if x is None else x
    return DataBundle(TensorSplit(x, y_train), val, None, DataMeta((8,), task, num_classes))


def test_check_fit_accepts_a_model_that_fits():
    check_fit(nn.Linear(8, 10), bundle(torch.arange(20) % 10))
    check_fit(nn.Linear(8, 1), bundle(torch.randn(20, 1), None, "regression"))


def test_label_out_of_range():
    y = torch.arange(20) % 10
    y[13] = 10  # not in the probe batch of 2: the whole tensor is checked
    with pytest.raises(DataError, match=r"train labels range over \[0, 10\], but the data has 10 classes.*\[0, 9\]"):
        check_fit(nn.Linear(8, 10), bundle(y))
    with pytest.raises(DataError, match="val labels range over"):
        check_fit(nn.Linear(8, 10), bundle(y.clamp(max=9), val=TensorSplit(torch.randn(3, 8), torch.tensor([0, -1, 2]))))


def test_output_too_narrow_for_the_classes():
    with pytest.raises(ModelError, match=r"Linear: outputs 2 values per sample, but the data has 3 classes.*Linear\(\.\.\., 3\)"):
        check_fit(nn.Linear(8, 2), bundle(torch.arange(12) % 3, num_classes=3))


def test_regression_output_of_the_wrong_size():
    with pytest.raises(ModelError, match="outputs 3 values per sample, but the regression target has 1"):
        check_fit(nn.Linear(8, 3), bundle(torch.randn(20, 1), None, "regression"))


def test_float_labels_for_classes_and_empty_splits():
    with pytest.raises(DataError, match="train labels are float32.*y.long()"):
        check_fit(nn.Linear(8, 3), bundle(torch.zeros(6), num_classes=3))
    empty_val = TensorSplit(torch.randn(0, 8), torch.zeros(0, dtype=torch.long))
    with pytest.raises(DataError, match="the val split is empty"):
        check_fit(nn.Linear(8, 3), bundle(torch.arange(6) % 3, num_classes=3, val=empty_val))


# Trainer-level: these need engine.py to call check_fit(self.model, self.data) in Trainer.__init__ (the lead
# wires it); until then they fail with "DID NOT RAISE" (the mistake surfaces as an IndexError inside fit).
@pytest.mark.parametrize("model, y, error", [
    (nn.Linear(8, 10), torch.tensor([0, 1, 2, 10] * 4), DataError),
    (nn.Linear(8, 2), torch.arange(16) % 3, ModelError),
])
def test_trainer_refuses_at_construction(model, y, error):
    from powertrain import Trainer
    from powertrain.recipe import TrainConfig

    data = bundle(y, num_classes=3 if error is ModelError else 10)
    with pytest.raises(error):
        Trainer(model, data, TrainConfig(epochs=1, device="cpu"), callbacks=[], meter=False)


# --- 12. metric names, known before training --------------------------------------------------------

@pytest.mark.parametrize("task, outputs, target", [
    ("multiclass", torch.randn(6, 3), torch.arange(6) % 3),
    ("binary", torch.randn(6, 1), (torch.arange(6) % 2).float()),
    ("regression", torch.randn(6, 1), torch.randn(6, 1)),
    ("reconstruction", torch.randn(6, 4), torch.randn(6, 4)),
    ("language_model", torch.randn(6, 5, 7), torch.zeros(6, 5, dtype=torch.long)),
])
def test_metric_names_are_what_an_evaluation_reports(task, outputs, target):
    m = TaskMetrics(task, 3)
    m.update(outputs, target)
    reported = {k for k, v in m.compute().items() if isinstance(v, float)} | {"loss"}
    assert metric_names(task) == reported
    assert "acc" not in metric_names(task)


def test_metric_names_with_the_model_add_the_loss_aliases():
    class VAE(nn.Module):
        def compute_loss(self, batch, outputs):
            return outputs.sum()

        def elbo_nats(self, loss):
            return -loss

    assert metric_names("reconstruction", nn.Identity()) == {"loss", "mse"}
    assert metric_names("reconstruction", VAE()) == {"loss", "elbo_nats"}
    assert metric_names("multiclass", nn.Identity()) == metric_names("multiclass")


# needs the lead's wiring: Trainer.__init__ checks train.early_stop.metric against metric_names(task)
def test_trainer_refuses_an_unknown_early_stop_metric_at_construction():
    from powertrain import Trainer
    from powertrain.recipe import TrainConfig

    cfg = TrainConfig(epochs=1, device="cpu", early_stop={"metric": "acc"})
    with pytest.raises(RecipeError, match="acc"):
        Trainer(nn.Linear(8, 10), bundle(torch.arange(20) % 10), cfg, callbacks=[], meter=False)


# --- 14. --checkpoint for eval and export ----------------------------------------------------------

def test_eval_and_export_take_a_checkpoint(capsys, monkeypatch):
    import importlib

    from powertrain.train import load

    exporting = importlib.import_module("powertrain.shrink.export")  # the module, not the function of that name
    seen = {}
    monkeypatch.setattr(load, "evaluate", lambda run_dir, split, **kw: seen.update(eval=kw) or {"loss": 1.0})
    monkeypatch.setattr(exporting, "export",
                        lambda run_dir, **kw: seen.update(export=kw) or {"format": "safetensors", "path": "p", "bytes": 1})
    assert cli.main(["eval", "--checkpoint", "step-00000040", "runs/a"]) == 0
    assert json.loads(capsys.readouterr().out) == {"test": {"loss": 1.0}}
    assert cli.main(["export", "runs/a", "--format", "safetensors", "--checkpoint", "step-00000040"]) == 0
    assert seen["eval"]["checkpoint"] == seen["export"]["checkpoint"] == "step-00000040"
    for command in ("eval", "export"):
        with pytest.raises(SystemExit):
            cli.main([command, "--help"])
        assert "needed when the newest checkpoint is damaged" in " ".join(capsys.readouterr().out.split())
