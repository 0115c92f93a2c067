"""Knowledge distillation (Hinton et al. 2015) as a `compute_loss` override: the unchanged `fit` trains
the student (Keras' Distiller is the model for this).

    loss = alpha * CE(y, s) + (1 - alpha) * T^2 * KL(softmax(t / T) || softmax(s / T))

s and t are the student's and the teacher's logits; T^2 keeps the soft term's gradients on the scale of
the hard one's as T grows. For a language model (GPT) both are (B, T, V) and every token counts once.

The teacher is a trained run directory: its recipe rebuilds the model, its final weights load into it
(best under early stopping), and it stays in eval mode without gradients. When augmentation is off
and the task is classification, its logits are computed once per train sample before training and
travel with each batch as `(x, teacher_logits, y)` (one index per batch, as for x and y); otherwise
it runs on every batch. Evaluation reports the student's own task loss, comparable with a student
trained alone.

The bill counts what the teacher costs: its forward passes (the cache, or one per batch) are in the
training FLOPs, time and energy, and `bill.json` gets a "teacher" block (from the teacher's own bill)
and a "distill" block beside the student's figures.

>>> from powertrain import train
>>> run = train("mnist1d-cnn", ["model.conv=[16,32,32]", "model.dense=[32]",
...                             "train.distill.teacher=runs/mnist1d-cnn"])  # doctest: +SKIP
>>> run.bill["teacher"]["params"] / run.bill["params"]  # doctest: +SKIP
6.2
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from .. import data, models
from .engine import Trainer
from ..errors import RecipeError
from ..measure.hardware import resolve_device
from ..measure import forward_flops
from ..recipe import Recipe, TrainConfig

TASKS = ("multiclass", "language_model")


def distillation_loss(student: torch.Tensor, teacher: torch.Tensor, target: torch.Tensor, alpha: float = 0.5,
                      temperature: float = 4.0) -> torch.Tensor:
    """alpha * CE(target, student) + (1 - alpha) * T^2 * KL(softmax(teacher/T) || softmax(student/T)),
    averaged over samples (over tokens for (B, T, V) logits). alpha = 1 is the plain cross-entropy.

    >>> s, t, y = torch.tensor([[2.0, 0.0]]), torch.tensor([[0.0, 2.0]]), torch.tensor([0])
    >>> round(float(distillation_loss(s, t, y, alpha=0.0, temperature=1.0)), 4)  # KL of (.12, .88) from (.88, .12)
    1.5232
    """
    if student.dim() == 3:  # (B, T, V): one distribution per token
        student, teacher, target = student.flatten(0, 1), teacher.flatten(0, 1), target.flatten()
    ce = F.cross_entropy(student, target)
    if alpha == 1.0:
        return ce
    T = temperature
    kl = F.kl_div(F.log_softmax(student.float() / T, dim=-1), F.log_softmax(teacher.float() / T, dim=-1),
                  reduction="batchmean", log_target=True)
    return alpha * ce + (1.0 - alpha) * T * T * kl


class TeacherLogits:
    """A train split whose batches carry the teacher's cached logits: `(x, teacher_logits, y)`. The
    inner split batches `order[i : i + batch_size]`, so the same slice indexes the cache."""

    def __init__(self, split, logits: torch.Tensor):
        self.split, self.logits = split, logits

    def __len__(self) -> int:
        return len(self.split)

    def to(self, device) -> "TeacherLogits":
        return TeacherLogits(self.split.to(device), self.logits.to(device))

    @property
    def tensors(self):
        return self.split.tensors

    def batches(self, order: torch.Tensor, batch_size: int, start: int = 0):
        idx = order.to(self.logits.device)
        for k, batch in enumerate(self.split.batches(order, batch_size, start)):
            i = (start + k) * batch_size
            yield (*batch[:-1], self.logits[idx[i:i + batch_size]], batch[-1])


class Distiller(Trainer):
    """A Trainer whose loss is `distillation_loss` against a frozen `teacher` module.

    >>> t = Distiller(student, data, TrainConfig(epochs=5), teacher=teacher, alpha=0.5, temperature=4.0)  # doctest: +SKIP
    >>> t.fit().evaluate("test")["accuracy"]  # doctest: +SKIP
    """

    teacher_dir: Optional[Path] = None  # the teacher's run directory, when loaded from one (its bill feeds ours)

    def __init__(self, model: nn.Module, data, config=None, *, teacher: nn.Module, alpha: float = 0.5,
                 temperature: float = 4.0, cache: bool = True, **trainer_kwargs):
        config = config or TrainConfig()
        # before Trainer.__init__, which counts a step's FLOPs (extra_step_flops reads the teacher's)
        self.teacher = teacher.to(resolve_device(config.device)).eval().requires_grad_(False)
        self.alpha, self.temperature = float(alpha), float(temperature)
        self.cached, self.teacher_flops_per_sample = False, 0  # set below; read by extra_step_flops
        super().__init__(model, data, config, **trainer_kwargs)
        if self.task not in TASKS:
            raise RecipeError(f"train.distill: distillation needs a classifier or a language model (task "
                              f"{' or '.join(TASKS)}); this dataset's task is '{self.task}'")
        if self._model_loss is not None:
            raise RecipeError("train.distill: the student model has its own compute_loss, which distillation "
                              "would replace; distil into a model without one")
        probe = next(self.data.train.batches(torch.arange(min(2, len(self.data.train))), 2))[0]
        self._check_outputs(probe)
        with self._autocast():
            self.teacher_flops_per_sample = forward_flops(self.teacher, probe[:1]).total
        self.cached = bool(cache and self._augment is None and self.task == "multiclass")
        self.cache_flops = 0
        self.cache_builds = 0  # this run's, over resumes (each process of a job builds the whole cache once)
        self._cache_window = None
        if self.cached:
            self._build_cache()

    def extra_step_flops(self, samples: int) -> int:
        """The teacher's forward per train sample, unless its logits are cached."""
        return 0 if self.cached else samples * self.teacher_flops_per_sample

    def _check_outputs(self, x: torch.Tensor) -> None:
        with torch.no_grad(), torch.random.fork_rng(devices=[]):
            was = self.model.training
            self.model.eval()
            try:
                s = self.model(x)
                t = self.teacher(x)
            except Exception as e:
                raise RecipeError(f"train.distill.teacher: the teacher cannot read the student's inputs of shape "
                                  f"{list(x.shape)} ({type(e).__name__}: {str(e).splitlines()[0][:120]})") from None
            finally:
                self.model.train(was)
        if tuple(s.shape) != tuple(t.shape):
            raise RecipeError(f"train.distill.teacher: the teacher's outputs are shaped {list(t.shape)[1:]} and the "
                              f"student's {list(s.shape)[1:]}; teacher and student must predict the same classes")

    @torch.no_grad()
    def teacher_logits(self, split) -> torch.Tensor:
        """The teacher's logits (float32) of every sample of `split`, in order."""
        order = torch.arange(len(split))
        out = []
        for batch in split.batches(order, self.cfg.eval_batch_size):
            with self._autocast():
                out.append(self.teacher(batch[0]).float())
        return torch.cat(out)

    def _build_cache(self) -> None:
        """The teacher's logits of every train sample, once, in a 'fit' meter window: its time, energy
        and FLOPs are part of the training's bill."""
        train = self.data.train
        self.cache_flops = len(train) * self.teacher_flops_per_sample
        self.cache_builds += self.dist.world_size  # every rank computes every sample's logits: simple, and paid for
        if self.meter:
            self.meter.begin("fit")
        try:
            logits = self.teacher_logits(train)
        finally:
            if self.meter:
                self._cache_window = self.meter.end("fit", flops=self.cache_flops)
        self.data = type(self.data)(TeacherLogits(train, logits), self.data.val, self.data.test, self.data.meta)

    def state_dict(self) -> dict:
        return {**super().state_dict(), "distill_cache_builds": self.cache_builds}

    def load_state_dict(self, state: dict) -> None:
        """As Trainer's; the resumed run's bill also keeps this process's cache build (time, energy, FLOPs)."""
        super().load_state_dict(state)
        self.cache_builds += int(state.get("distill_cache_builds", 0))
        if self.meter and self._cache_window is not None and self.dist.is_main:
            from ..measure import WindowTotals

            self.meter._totals.setdefault("fit", WindowTotals("fit")).add(self._cache_window)

    def compute_loss(self, batch: tuple, outputs) -> torch.Tensor:
        if not self.model.training:  # evaluation: the student's own task loss
            return super().compute_loss(batch, outputs)
        if len(batch) == 3:  # (x, cached teacher logits, y)
            teacher = batch[1]
        else:
            with torch.no_grad():
                teacher = self.teacher(batch[0])
        return distillation_loss(outputs, teacher, batch[-1], self.alpha, self.temperature)

    def bill(self) -> dict:
        """The Trainer's bill, with the teacher's figures beside the student's (when loaded from a run)."""
        bill = super().bill()
        if self.teacher_dir is not None and self.dist.is_main:
            bill.update(bill_blocks(self, bill, self.teacher_dir))
        return bill

    def teacher_forward_flops(self) -> int:
        """FLOPs of the teacher's forward passes in this run: the cache's (once per start or resume), or
        one per sample trained."""
        if self.cached:
            return self.cache_flops * self.cache_builds
        return self.samples_trained() * self.teacher_flops_per_sample


# ---------------------------------------------------------------- the teacher from its run directory
def load_teacher(run_dir: str | Path, student: Recipe, student_meta) -> tuple[nn.Module, Path]:
    """The teacher run's model with its final weights, and its path. Refuses (one line) a missing or
    unfinished run, a quantized one, another number of classes, or a language model on another vocabulary."""
    from ..run import checkpoint
    from ..run.rundir import RunDir
    from .transfer import final_weights_file

    what = "train.distill.teacher"
    weights = final_weights_file(run_dir, what)  # a readable run with final fp32 weights, or a one-line error
    run = RunDir.open(run_dir)
    path, recipe = run.path, run.recipe()
    same_data = recipe.data.model_dump() == student.data.model_dump()
    meta = student_meta if same_data else data.build(recipe.data.model_dump(), seed=recipe.run.seed).meta
    if meta.task != student_meta.task or meta.num_classes != student_meta.num_classes:
        raise RecipeError(f"{what}: '{path}' was trained for task {meta.task} with {meta.num_classes} classes, the "
                          f"student's data has task {student_meta.task} with {student_meta.num_classes}; "
                          f"distil from a teacher trained on the same classes")
    if student_meta.task == "language_model":
        ours, theirs = (getattr(m.vocab, "itos", None) for m in (student_meta, meta))
        if student_meta.vocab_size != meta.vocab_size or ours != theirs:
            raise RecipeError(f"{what}: '{path}' uses another vocabulary ({meta.vocab_size} tokens) than "
                              f"the student ({student_meta.vocab_size}); teacher and student need the "
                              f"same tokenizer: give the student the teacher's data section")
    with torch.random.fork_rng(devices=[]):  # the student's dropout and augmentation draws stay as without a teacher
        model = models.build(recipe.model.model_dump(), meta)
    checkpoint.load_weights(model, weights, "cpu")
    return model.eval(), path


def bill_blocks(trainer: Distiller, bill: dict, teacher_dir: Path) -> dict:
    """The "teacher" and "distill" blocks of a distilled run's bill: the teacher's per-sample figures
    from its own bill.json beside the student's, and the teacher FLOPs this training spent."""
    from ..errors import RunDirError
    from ..run.rundir import RunDir

    run = RunDir(teacher_dir)
    try:
        tb = run.read("bill", required=False) or {}
        tev = (run.read("eval", required=False) or {}).get("test", {})
    except RunDirError:
        tb, tev = {}, {}
    teacher = {"run": str(Path(teacher_dir).resolve()), "params": models.count_params(trainer.teacher),
               "flops_per_sample_forward": trainer.teacher_flops_per_sample,
               "j_per_inference_sample": tb.get("j_per_inference_sample"),
               "energy_method": (tb.get("energy") or {}).get("method"),
               "test": {k: v for k, v in tev.items() if isinstance(v, float)},
               "source": "params and FLOPs counted here; J per inference sample from the teacher's bill.json"}
    distill = {"alpha": trainer.alpha, "temperature": trainer.temperature, "cached_logits": trainer.cached,
               "teacher_forward_flops": trainer.teacher_forward_flops(),
               "student": {"params": bill.get("params"),
                           "flops_per_sample_forward": (bill.get("flops") or {}).get("per_sample_forward"),
                           "j_per_inference_sample": bill.get("j_per_inference_sample")},
               "note": ("the teacher's forward passes are part of flops.train_total and of the fit time and energy: "
                        + ("its logits of every train sample, computed once before training" if trainer.cached else
                           "one per train sample per step (also in flops.per_step_train)")
                        + "; the teacher's own training is in its bill.json, and `powertrain compare` adds it")}
    return {"teacher": teacher, "distill": distill}
