"""The recipe's schema: sections `data`, `model`, `train`, `run` as pydantic models, and `parse_recipe`.

The schema names a dataset and a model family; it imports neither. Their own options are checked by
the registries that data/ and models/ fill (recipe/registry.py: `check_section`), with the same
one-line errors as the rest of the recipe.

>>> parse_recipe({"data": {"name": "xor"}, "model": {"name": "mlp", "hidden": [3]}}).train.epochs
10
"""
from __future__ import annotations

import os
from typing import Any, Literal, Optional

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_serializer, model_validator

from ..errors import RecipeError, closest, format_validation_error  # noqa: F401  (re-exported)
from .registry import check_section
from .strict import check_field, check_tree, clean_name

SEED_MAX = 2**32 - 1  # run.seed: the data splits (scikit-learn, NumPy) take 32-bit seeds


class Strict(BaseModel):
    """A recipe section: unknown keys are errors; numbers are numbers (strict.check_field), finite."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=(), allow_inf_nan=False)

    @field_validator("*", mode="before")
    @classmethod
    def _numbers(cls, value, info):
        return check_field(cls.model_fields[info.field_name].annotation, value)


class EarlyStop(Strict):
    metric: str = "loss"  # a validation metric: loss, accuracy, f1_macro, ...
    patience: int = Field(5, ge=1)  # evaluations without improvement before stopping
    min_delta: float = Field(0.0, ge=0)  # smallest change that counts as an improvement
    restore_best: bool = True  # load the best weights before the final test evaluation


class DistillConfig(Strict):
    """Knowledge distillation from a trained teacher run (Hinton et al. 2015): the loss is
    alpha * CE(y, student) + (1 - alpha) * T^2 * KL(softmax(teacher / T) || softmax(student / T))."""

    teacher: str  # the teacher's run directory (its recipe and final weights are loaded, frozen, in eval mode)
    alpha: float = Field(0.5, ge=0, le=1)  # weight of the hard-label cross-entropy; 1 - alpha weighs the KL term
    temperature: float = Field(4.0, gt=0)  # T: softens both distributions; the KL term is scaled by T^2
    cache: bool = True  # compute the teacher's logits once per train sample (classifiers without augmentation)


class PrivacyConfig(Strict):
    """Differentially private training, DP-SGD through Opacus (train/privacy.py): each step's batch is a Poisson
    sample (rate batch_size / train samples), each sample's gradient is clipped to max_grad_norm, and
    Gaussian noise of std noise_multiplier * max_grad_norm is added to their sum. Give epsilon (the
    noise is calibrated to spend it over the run's steps) or noise_multiplier, not both."""

    epsilon: Optional[float] = Field(None, gt=0)  # target epsilon at the end of training, at delta
    noise_multiplier: Optional[float] = Field(None, ge=0)  # instead of epsilon: sigma, the noise std over max_grad_norm
    delta: float = Field(1e-5, gt=0, lt=1)  # delta of (epsilon, delta)-DP; keep it below 1 / train samples
    max_grad_norm: float = Field(1.0, gt=0)  # C: each sample's gradient is clipped to this L2 norm
    accountant: Literal["rdp", "prv"] = "rdp"  # Opacus's accountant: Renyi DP, or PRV (tighter, slower)

    @model_validator(mode="after")
    def _one_of(self):
        if (self.epsilon is None) == (self.noise_multiplier is None):
            raise ValueError("set either epsilon (a target) or noise_multiplier, not both and not neither; "
                             "e.g. train.privacy.epsilon=8")
        return self


COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")


class TrainConfig(Strict):
    """How to train. Steps count optimizer updates; `batch_size` is the batch per update."""

    epochs: int = Field(10, ge=1)
    max_steps: Optional[int] = Field(None, ge=1)  # stop after this many steps (overrides epochs)
    batch_size: int = Field(64, ge=1)  # samples per optimizer step, across all ranks (each takes its share)
    accumulate: int = Field(1, ge=1)  # micro-batches per step; must divide batch_size
    eval_batch_size: int = Field(1024, ge=1)
    optimizer: Literal["sgd", "adam", "adamw", "rmsprop"] = "adam"
    lr: float = Field(1e-3, gt=0)
    momentum: float = Field(0.0, ge=0, lt=1)  # sgd and rmsprop
    nesterov: bool = False  # sgd only; needs momentum > 0
    betas: tuple[float, float] = (0.9, 0.999)  # adam and adamw
    weight_decay: float = Field(0.0, ge=0)
    schedule: Literal["constant", "step", "cosine", "cosine_restarts", "onecycle"] = "constant"
    warmup_steps: int = Field(0, ge=0)  # linear warmup from 0, multiplied onto any schedule
    step_size: int = Field(1000, ge=1)  # step: decay every step_size steps ...
    gamma: float = Field(0.1, gt=0, le=1)  # ... by this factor
    min_lr: float = Field(0.0, ge=0)  # cosine and cosine_restarts floor
    restart_steps: int = Field(1000, ge=1)  # cosine_restarts: length of the first cycle
    restart_mult: int = Field(1, ge=1)  # cosine_restarts: cycle length multiplier
    pct_start: float = Field(0.3, gt=0, lt=1)  # onecycle: fraction of steps rising
    grad_clip: Optional[float] = Field(None, gt=0)  # max global grad norm
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    compile: Any = False  # torch.compile: true (its default mode) or a mode of COMPILE_MODES (reduce-overhead: CUDA graphs)
    device: str = "auto"  # auto, cpu, cuda, cuda:N, mps
    threads: Any = "auto"  # CPU threads: a whole number >= 1, or auto: the CPUs free at the start (settings.py)
    strategy: Literal["auto", "single", "ddp", "fsdp"] = "auto"  # auto: ddp when torchrun starts > 1 process
    activation_checkpointing: bool = False  # recompute each transformer block's activations in backward
    eval_every_epochs: int = Field(1, ge=1)
    eval_every_steps: Optional[int] = Field(None, ge=1)  # if set, evaluate by steps instead
    early_stop: Optional[EarlyStop] = None
    log_every: int = Field(50, ge=1)  # steps between metrics.jsonl lines and progress updates
    checkpoint_every_steps: Optional[int] = Field(None, ge=1)  # besides one at every evaluation
    keep_checkpoints: int = Field(2, ge=1)  # newest step checkpoints kept on disk
    distill: Optional[DistillConfig] = None  # train as a student of a teacher run (train/distill.py)
    privacy: Optional[PrivacyConfig] = None  # differentially private training, DP-SGD (train/privacy.py)
    freeze: list[str] = []  # glob patterns over parameter names (e.g. "0.*"): those get no updates
    backbone_lr_mult: Optional[float] = Field(None, gt=0)  # LR multiplier of the parameters loaded by model.init_from

    @field_validator("compile", mode="before")
    @classmethod
    def _compile(cls, v):
        if isinstance(v, bool) or v in COMPILE_MODES:
            return v
        raise ValueError(f"expected true, false or a torch.compile mode ({', '.join(COMPILE_MODES)})")

    @field_validator("threads", mode="before")
    @classmethod
    def _threads(cls, v):
        if v == "auto" or (isinstance(v, int) and not isinstance(v, bool) and 1 <= v <= 4096):
            return v
        raise ValueError("expected auto or a whole number of CPU threads >= 1 (e.g. train.threads=auto)")


class RunConfig(Strict):
    seed: int = 0  # model init, data order and splits; same seed on CPU -> same bits
    out: Optional[str] = None  # run directory; default runs/<recipe>-<timestamp>
    region: str = "world"  # grid for CO2e: a region of the table (`powertrain bill --regions`) or g/kWh, e.g. "350"
    pue: float = Field(1.0, ge=1.0)  # data-centre power usage effectiveness (1.0: the device's own energy only)
    price_per_kwh: Optional[float] = Field(None, ge=0)  # electricity price, for a cost line in the bill
    idle_baseline_s: float = Field(0.0, ge=0)  # measure idle power this long first; report energy above idle
    parent: Optional[str] = None  # the run this one derives from (set by distill and model.init_from); compare joins them
    tensorboard: bool = False  # write TensorBoard event files into <run>/tensorboard (pip install 'powertrain[tensorboard]')
    mlflow: bool | str = False  # log to MLflow: true = MLflow's default store (./mlflow.db or ./mlruns), or a tracking URI
    wandb: bool = False  # log to Weights & Biases under <run>/wandb, offline unless WANDB_MODE says otherwise (pip install 'powertrain[wandb]')


class Section(BaseModel):
    """`model:` or `data:`: a registered `name` plus that entry's own options (checked separately)."""

    model_config = ConfigDict(extra="allow", protected_namespaces=())
    name: str

    def options(self) -> dict[str, Any]:
        return dict(self.model_extra or {})


INIT_KEYS = ("init_from", "init_exclude")


class ModelSection(Section):
    """`model:`: the model's own options, plus where to initialise its weights from (transfer learning).

    `model_dump()` gives the model's own options only (what `models.build` takes); the recipe as a
    whole (`Recipe.to_dict`) keeps `init_from` and `init_exclude` when they are set."""

    init_from: Optional[str] = None  # a run directory whose weights initialise matching parameters (by name and shape)
    init_exclude: list[str] = []  # glob patterns of parameter names not to load (e.g. a new head: "9.*")

    @model_serializer(mode="wrap")
    def _omit_unset_init(self, handler):
        out = handler(self)
        for key in INIT_KEYS:
            if not getattr(self, key):
                out.pop(key, None)
        return out

    def model_dump(self, **kwargs) -> dict[str, Any]:
        kwargs["exclude"] = set(kwargs.get("exclude") or ()) | set(INIT_KEYS)
        return super().model_dump(**kwargs)


class Recipe(Strict):
    name: str = "custom"  # cleaned (strict.clean_name): it names folders, so it cannot lead out of them
    description: str = ""
    data: Section
    model: ModelSection
    train: TrainConfig = TrainConfig()
    run: RunConfig = RunConfig()

    @field_validator("name")
    @classmethod
    def _clean_name(cls, value: str) -> str:
        return clean_name(value)

    def to_dict(self) -> dict:
        return self.model_dump(mode="json")


# ---------------------------------------------------------------- DP-SGD's refusals (train/privacy.py)
REFUSED = {  # TrainConfig keys that cannot go with DP-SGD: why, and the fix
    "grad_clip": ("DP-SGD clips each sample's gradient at train.privacy.max_grad_norm", "remove train.grad_clip"),
    "compile": ("Opacus's per-sample-gradient hooks do not run under torch.compile", "set train.compile=false"),
    "activation_checkpointing": ("recomputed activations would reach Opacus's hooks twice",
                                 "set train.activation_checkpointing=false"),
}


def check_privacy(cfg: TrainConfig) -> None:
    """One-line refusals of settings DP-SGD cannot take (before anything is built)."""
    for key, (why, fix) in REFUSED.items():
        if getattr(cfg, key):
            raise RecipeError(f"train.{key}: {why}; {fix} to train with train.privacy")
    if cfg.strategy in ("ddp", "fsdp"):
        raise RecipeError(f"train.strategy: {cfg.strategy} is not supported with train.privacy (Poisson sampling and "
                          f"the accountant run in one process here); train a private run with one process")
    if cfg.distill is not None:
        raise RecipeError("train.distill: distillation with train.privacy is not supported (the teacher's logits would "
                          "need their own privacy analysis); remove one of them")
    if cfg.precision == "fp16":
        raise RecipeError("train.precision: fp16 with a gradient scaler is not supported with train.privacy; "
                          "use fp32 or bf16")


def check_out(out: Optional[str]) -> None:
    """run.out, a folder chosen by a recipe: relative, and under the working directory once '..' is counted;
    a folder elsewhere is the command line's choice (--out), not a file's."""
    if not out:
        return
    path = os.path.normpath(os.path.expanduser(out))
    if os.path.isabs(path) or path == ".." or path.startswith(".." + os.sep):
        raise RecipeError(f"run.out: '{out}' lies outside the working directory; a recipe may choose a folder under "
                          f"it (e.g. runs/my-run); to write elsewhere pass --out {out} on the command line")


def parse_recipe(raw: dict) -> Recipe:
    """Validate a recipe dict, including the registered model and data options."""
    check_tree(raw, "recipe")
    seed = (raw.get("run") or {}).get("seed") if isinstance(raw.get("run"), dict) else None
    if type(seed) is int and not 0 <= seed <= SEED_MAX:
        raise RecipeError(f"run.seed: expected a whole number in [0, {SEED_MAX}] (the data splits take 32-bit "
                          f"seeds), got {seed}; pick another seed")
    try:
        recipe = Recipe.model_validate(raw)
    except ValidationError as err:
        raise RecipeError(format_validation_error(err, Recipe)) from None
    if not 0 <= recipe.run.seed <= SEED_MAX:  # 1e10 (a float) became a whole number above
        raise RecipeError(f"run.seed: expected a whole number in [0, {SEED_MAX}] (the data splits take 32-bit "
                          f"seeds), got {recipe.run.seed}; pick another seed")
    check_out(recipe.run.out)
    check_section("model", recipe.model.model_dump())
    check_section("data", recipe.data.model_dump())
    tc = recipe.train
    if tc.batch_size % tc.accumulate:
        raise RecipeError(
            f"train.accumulate: {tc.accumulate} must divide train.batch_size ({tc.batch_size}); "
            f"pick a divisor such as {max(d for d in range(1, tc.accumulate + 1) if tc.batch_size % d == 0)}"
        )
    if tc.nesterov and (tc.optimizer != "sgd" or tc.momentum == 0):
        raise RecipeError("train.nesterov: needs train.optimizer=sgd and train.momentum > 0")
    if tc.backbone_lr_mult is not None and not recipe.model.init_from:
        raise RecipeError("train.backbone_lr_mult: applies to the parameters loaded by model.init_from, which is not "
                          "set; set model.init_from=RUN_DIR or remove train.backbone_lr_mult")
    if tc.privacy is not None:
        check_privacy(tc)  # settings DP-SGD cannot take, refused before anything is built
    if recipe.model.init_exclude and not recipe.model.init_from:
        raise RecipeError("model.init_exclude: says which weights model.init_from should not load, but "
                          "model.init_from is not set; set it or remove model.init_exclude")
    return recipe
