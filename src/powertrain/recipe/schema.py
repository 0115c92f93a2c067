"""Recipes: a YAML file with sections `data`, `model`, `train`, `run`, validated by pydantic.

>>> from powertrain import load_recipe
>>> r = load_recipe("xor", ["train.epochs=10"])
>>> r.train.epochs
10
"""
from __future__ import annotations

import copy
from importlib import resources
from pathlib import Path
from typing import Any, Literal, Optional

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_serializer, model_validator

from .errors import RecipeError, closest, format_validation_error  # noqa: F401  (re-exported)


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", protected_namespaces=())


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
    """Differentially private training, DP-SGD through Opacus (privacy.py): each step's batch is a Poisson
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
    compile: bool = False  # torch.compile the model
    device: str = "auto"  # auto, cpu, cuda, cuda:N, mps
    strategy: Literal["auto", "single", "ddp", "fsdp"] = "auto"  # auto: ddp when torchrun starts > 1 process
    activation_checkpointing: bool = False  # recompute each transformer block's activations in backward
    eval_every_epochs: int = Field(1, ge=1)
    eval_every_steps: Optional[int] = Field(None, ge=1)  # if set, evaluate by steps instead
    early_stop: Optional[EarlyStop] = None
    log_every: int = Field(50, ge=1)  # steps between metrics.jsonl lines and progress updates
    checkpoint_every_steps: Optional[int] = Field(None, ge=1)  # besides one at every evaluation
    keep_checkpoints: int = Field(2, ge=1)  # newest step checkpoints kept on disk
    distill: Optional[DistillConfig] = None  # train as a student of a teacher run (compress/distill.py)
    privacy: Optional[PrivacyConfig] = None  # differentially private training, DP-SGD (privacy.py)
    freeze: list[str] = []  # glob patterns over parameter names (e.g. "0.*"): those get no updates
    backbone_lr_mult: Optional[float] = Field(None, gt=0)  # LR multiplier of the parameters loaded by model.init_from


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
    name: str = "custom"
    description: str = ""
    data: Section
    model: ModelSection
    train: TrainConfig = TrainConfig()
    run: RunConfig = RunConfig()

    def to_dict(self) -> dict:
        return self.model_dump(mode="json")


# ---------------------------------------------------------------- loading
def builtin_recipes() -> dict[str, Path]:
    """Name -> path of each recipe shipped in the package."""
    folder = resources.files("powertrain") / "recipes"
    return {Path(p.name).stem: Path(str(p)) for p in folder.iterdir() if p.name.endswith(".yaml")}


def _read(source: str | Path) -> dict:
    path = Path(source)
    known = {} if path.suffix else builtin_recipes()
    if str(source) in known:
        path = known[str(source)]
    elif not path.suffix and not path.is_file():  # a file without suffix (`powertrain train ./myrecipe`) is read
        raise RecipeError(
            f"recipe '{source}': not a built-in recipe{closest(str(source), known)} and not a file; "
            f"run `powertrain recipes` to list them, or pass a path to a .yaml file"
        )
    if not path.is_file():
        raise RecipeError(f"recipe file '{path}': not found; pass an existing .yaml path or a built-in name")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise RecipeError(f"recipe file '{path}': not a text YAML recipe (byte {e.object[e.start]:#04x} at offset "
                          f"{e.start} is not UTF-8 text); pass a .yaml recipe file or a built-in name") from None
    if "\x00" in text:
        raise RecipeError(f"recipe file '{path}': not a text YAML recipe (it contains NUL bytes: a binary file); "
                          f"pass a .yaml recipe file or a built-in name")
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as e:
        where = getattr(e, "problem_mark", None)
        line = f" at line {where.line + 1}" if where else ""
        raise RecipeError(f"recipe file '{path}': invalid YAML{line}; check indentation and colons") from None
    if not isinstance(raw, dict):
        raise RecipeError(f"recipe file '{path}': expected a mapping with sections data, model, train, run")
    raw.setdefault("name", path.stem)
    data = raw.get("data")
    for key in ("path", "test_path"):  # a relative data file next to the recipe wins over the working directory
        rel = data.get(key) if isinstance(data, dict) else None
        if isinstance(rel, str) and not Path(rel).expanduser().is_absolute() and (path.parent / rel).exists():
            data[key] = str((path.parent / rel).resolve())
    return raw


def apply_overrides(raw: dict, overrides: list[str]) -> dict:
    """Apply `section.key=value` overrides; values are parsed as YAML (`3e-3`, `[64, 32]`, `true`)."""
    for item in overrides:
        if "=" not in item:
            raise RecipeError(f"override '{item}': expected key.path=value, e.g. train.lr=3e-3")
        key, _, text = item.partition("=")
        value = yaml.safe_load(text) if text.strip() else None
        if isinstance(value, str):  # YAML 1.1 reads '3e-3' as a string
            try:
                value = float(value) if any(c in value for c in ".eE") else int(value)
            except ValueError:
                pass
        node, parts = raw, key.strip().split(".")
        for i, part in enumerate(parts[:-1]):
            nxt = node.setdefault(part, {})
            if nxt is None:
                nxt = node[part] = {}
            if not isinstance(nxt, dict):
                raise RecipeError(f"override '{item}': {'.'.join(parts[: i + 1])} is a value, not a section")
            node = nxt
        node[parts[-1]] = value
    return raw


def parse_recipe(raw: dict) -> Recipe:
    """Validate a recipe dict, including the registered model and data options."""
    from . import data, models  # late import: registries fill on import

    try:
        recipe = Recipe.model_validate(raw)
    except ValidationError as err:
        raise RecipeError(format_validation_error(err, Recipe)) from None
    models.MODELS.options(recipe.model.model_dump())
    data.DATASETS.options(recipe.data.model_dump())
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
        from .privacy import check_config  # settings DP-SGD cannot take, refused before anything is built

        check_config(tc)
    if recipe.model.init_exclude and not recipe.model.init_from:
        raise RecipeError("model.init_exclude: says which weights model.init_from should not load, but "
                          "model.init_from is not set; set it or remove model.init_exclude")
    return recipe


def load_recipe(source: str | Path | dict, overrides: list[str] | None = None) -> Recipe:
    """Load a built-in recipe by name, a YAML file, or a dict; then apply dotted overrides."""
    raw = copy.deepcopy(source) if isinstance(source, dict) else _read(source)
    return parse_recipe(apply_overrides(raw, list(overrides or [])))
