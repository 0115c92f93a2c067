"""The step path has no host-device sync: nothing in powertrain reads a tensor's value (item, tolist,
float, bool, ...) inside a training step, nor between two log points outside step boundaries. On a GPU
each such read would stall the CPU until the GPU caught up; on this CPU-only machine the calls are
counted instead (torch's own internals, e.g. an optimizer's CPU step counter, are not powertrain's)."""
import sys
from pathlib import Path

import pytest
import torch

import powertrain
from powertrain.train import lifecycle

PACKAGE = str(Path(powertrain.__file__).parent)
READS = ("item", "tolist", "__float__", "__int__", "__bool__", "numpy", "cpu")


@pytest.fixture
def sync_calls(monkeypatch):
    calls, state = [], {"trainer": None, "in_step": False}

    def spy(name, real):
        def wrapper(self, *a, **k):
            caller = sys._getframe(1).f_code.co_filename
            if state["trainer"] is not None and caller.startswith(PACKAGE):
                calls.append((state["trainer"].step, state["in_step"], name, caller, sys._getframe(1).f_lineno))
            return real(self, *a, **k)
        return wrapper

    for name in READS:
        monkeypatch.setattr(torch.Tensor, name, spy(name, getattr(torch.Tensor, name)))
    return calls, state


@pytest.mark.parametrize("recipe", ["digits-mlp", "mnist1d-cnn"])
def test_no_sync_inside_steps_or_between_log_points(sync_calls, recipe, tmp_path):
    calls, state = sync_calls
    r = powertrain.load_recipe(recipe, ["train.max_steps=45", "train.log_every=10", "train.eval_every_steps=40",
                                        "train.batch_size=64"])
    trainer = lifecycle.build_trainer(r, None, callbacks=[])
    step = trainer.train_step

    def marked(batch):
        state["in_step"] = True
        try:
            return step(batch)
        finally:
            state["in_step"] = False

    trainer.train_step = marked
    state["trainer"] = trainer
    trainer.fit()
    state["trainer"] = None
    spe = trainer.steps_per_epoch
    allowed = {s for s in range(trainer.step + 1) if s % 10 == 0 or s % 40 == 0 or s % spe == 0 or s == trainer.step}
    bad = [c for c in calls if c[1] or c[0] not in allowed]
    assert not bad, "host-device syncs on the step path: " + "; ".join(
        f"step {s}{' (inside the step)' if inside else ''}: Tensor.{name} at {Path(f).name}:{line}"
        for s, inside, name, f, line in bad[:8])
    assert calls, "the spy saw nothing: it is not measuring"  # the log points do read the loss


def test_a_nan_loss_still_names_its_step(tmp_path):
    from powertrain.errors import NonFiniteLoss

    class Poison(powertrain.Callback):
        def on_step_end(self, trainer, loss):
            if trainer.step == 13:
                with torch.no_grad():
                    next(trainer.model.parameters()).fill_(float("nan"))

    with pytest.raises(NonFiniteLoss, match="at step 14 .*last good checkpoint is .*step-00000010"):
        powertrain.train("digits-mlp", ["train.log_every=20", "train.checkpoint_every_steps=5"],
                         out=tmp_path / "run", callbacks=[Poison()])
    assert powertrain.RunDir(tmp_path / "run").list_checkpoints()[-1].name == "step-00000010"


def test_evaluation_reads_the_device_a_fixed_number_of_times_not_once_per_batch(sync_calls):
    """Evaluating val (144 samples) in batches of 4 reads tensors exactly as often as in one batch of 1024:
    the losses stay on the device until the end (a read per batch would stall a GPU 36 times)."""
    calls, state = sync_calls
    r = powertrain.load_recipe("digits-mlp", ["train.max_steps=2", "train.device=cpu"])
    trainer = lifecycle.build_trainer(r, None, callbacks=[])
    reads, results = {}, {}
    for size in (4, 1024):
        trainer.cfg = trainer.cfg.model_copy(update={"eval_batch_size": size})
        calls.clear()
        state["trainer"] = trainer
        results[size] = trainer.evaluate("val")
        state["trainer"] = None
        reads[size] = len(calls)
    assert len(trainer.data.val) > 4 * 30 and reads[4] == reads[1024] > 0, reads
    assert results[4]["loss"] == pytest.approx(results[1024]["loss"], rel=1e-5)
    assert results[4]["accuracy"] == results[1024]["accuracy"]
