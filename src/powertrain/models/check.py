"""Checks before training: a model and its data fit together, or a one-line error says why.

`dry_run` turns shape bugs into one-line errors naming the layer and both shapes; `check_fit` adds
the data's own mistakes (empty splits, labels out of range) and a too narrow output layer. Both run
on a batch of 2 in eval mode without gradients, so they consume no random numbers and change no
state (BatchNorm statistics stay as they are).
"""
from __future__ import annotations

import ast
import math
import re
import warnings

import torch
from torch import nn

from ..errors import DataError, ModelError

SPLITS = ("train", "val", "test")


class ShapeError(ModelError):
    """A layer's input has the wrong shape (exit status 2)."""


def _expects(module: nn.Module) -> str:
    for attr in ("in_features", "in_channels", "input_size", "embed_dim", "normalized_shape", "num_embeddings"):
        if hasattr(module, attr):
            return f"{attr}={getattr(module, attr)}"
    return type(module).__name__


def _shape(x) -> str:
    if isinstance(x, torch.Tensor):
        return str(tuple(x.shape))
    if isinstance(x, (tuple, list)) and x:
        return _shape(x[0])
    return type(x).__name__


def dry_run(model: nn.Module, sample: torch.Tensor):
    """Return `model(sample)`; raise ShapeError if it fails or mixes samples across the batch dimension."""
    leaves = [(n, m) for n, m in model.named_modules() if n and not any(True for _ in m.children())]
    trace: list[tuple[str, str, str | None]] = []  # (layer, input shape, output shape or None if it failed)
    hooks = []
    for name, mod in leaves:
        hooks.append(mod.register_forward_pre_hook(lambda m, a, n=name: trace.append((n, _shape(a), None))))
        hooks.append(mod.register_forward_hook(
            lambda m, a, out, n=name: trace.__setitem__(-1, (n, trace[-1][1], _shape(out)))))
    cls, batch = type(model).__name__, sample.shape[0]
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            out = model(sample)
    except (RuntimeError, ValueError, IndexError, TypeError) as err:
        reason = str(err).strip().splitlines()[0]
        by_name = dict(leaves)
        if trace and trace[-1][2] is None:  # failed inside a layer
            name, shape_in, _ = trace[-1]
            raise ShapeError(f"{cls}: layer '{name}' got input of shape {shape_in} but expects "
                             f"{_expects(by_name[name])} ({reason})") from None
        last = trace[-1] if trace else ("input", _shape(sample), _shape(sample))
        names = [n for n, _ in leaves]
        nxt = names[names.index(last[0]) + 1] if last[0] in names[:-1] else None
        size = re.search(r"invalid for input of size (\d+)", reason)
        has = f"{int(size.group(1)) // batch} values per sample" if size else f"shape {last[2]}"
        if nxt:
            raise ShapeError(f"{cls}: layer '{nxt}' expects {_expects(by_name[nxt])}, but after layer "
                             f"'{last[0]}' the data has {has} ({reason})") from None
        raise ShapeError(f"{cls}: after layer '{last[0]}' the data has {has} ({reason})") from None
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    first = out[0] if isinstance(out, (tuple, list)) else out
    if isinstance(first, torch.Tensor) and first.dim() > 0 and first.shape[0] != batch:
        culprit = next(((n, s) for n, s, _ in trace if not s.startswith(f"({batch},")), None)
        where = f" first at layer '{culprit[0]}', which got {culprit[1]}" if culprit else ""
        if culprit and culprit[1].startswith("("):  # a tensor's shape: say what each sample had
            where += (f": {math.prod(ast.literal_eval(culprit[1])) // batch} values per sample, but it expects "
                      f"{_expects(dict(leaves)[culprit[0]])}")
        raise ShapeError(f"{cls}: a batch of {batch} samples came out as {first.shape[0]} rows{where}; "
                         f"a reshape (view) mixes samples: flatten with x.flatten(1) and fix the layer's size")
    return out


TRAIN_BYTES_PER_PARAM = 16  # fp32 weights, their gradients and Adam's two moments
SMALL_PARAMS = 4_000_000  # up to this many parameters the memory check runs the real model on one sample


def available_memory() -> int | None:
    """Bytes of memory this process can still take: the kernel's MemAvailable, capped by a cgroup limit."""
    found = []
    try:
        for line in open("/proc/meminfo"):
            if line.startswith("MemAvailable:"):
                found.append(int(line.split()[1]) * 1024)
    except (OSError, ValueError, IndexError):
        pass
    try:
        limit = open("/sys/fs/cgroup/memory.max").read().strip()
        used = int(open("/sys/fs/cgroup/memory.current").read())
        if limit.isdigit():
            found.append(int(limit) - used)
    except (OSError, ValueError):
        pass
    return min(found) if found else None


def _gb(n: float) -> str:
    return f"{n / 1e9:.1f} GB" if n >= 1e8 else f"{n / 1e6:.1f} MB"


def device_memory(device=None) -> tuple[int | None, str]:
    """(free bytes, where) of the device training will use: a CUDA device's free memory, else this machine's
    available memory. `device` None or 'auto': CUDA when there is one."""
    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu") if device in (None, "auto") else torch.device(device)
    if dev.type == "cuda":
        try:
            return torch.cuda.mem_get_info(dev)[0], f"{torch.cuda.get_device_name(dev)} has"
        except (RuntimeError, AssertionError):
            return None, ""
    return available_memory(), "this machine has"


def check_memory(build, meta, batch_size: int | None, what: str, device=None, available: int | None = None) -> None:
    """Build the model with `build()` on the meta device (no memory is allocated) and refuse, in one line
    with the figure, one with an empty layer, one whose weights would not fit in this machine's memory (a
    model is built there first), or one whose training would not fit on `device` (`available` bytes if
    given): 16 bytes per parameter (fp32 weights, gradients, Adam's two moments) plus the layers' outputs for
    a batch of `batch_size` (2 if unknown). A builder that cannot run on the meta device is left to the real
    build."""
    try:
        with torch.device("meta"), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # e.g. "initializing zero-element tensors is a no-op"
            model = build()
    except Exception:  # noqa: BLE001  (the real build reports its own errors)
        return
    for name, p in model.named_parameters():
        if 0 in p.shape:
            raise ModelError(f"{what}: layer '{name.rsplit('.', 1)[0]}' would be empty (its {name.rsplit('.', 1)[-1]} "
                             f"has shape {tuple(p.shape)}); a width, channel count or size of 0 in the recipe makes "
                             f"no layer: use 1 or more")
    params = sum(p.numel() for p in model.parameters())
    ram = available_memory() if available is None else available
    if ram is not None and 4 * params > ram:
        raise ModelError(f"{what}: its {params:,} fp32 parameters alone need {_gb(4 * params)}, but this machine has "
                         f"{_gb(ram)} available; make the model smaller (its widths, layers)")
    batch = max(int(batch_size or 2), 1)
    if params <= SMALL_PARAMS:  # built for real and run on one sample (outputs grow with the batch): a first forward
        with torch.random.fork_rng(devices=[]):  # on the meta device loads ~1 s of torch's symbolic shapes
            one = _activation_bytes(build(), meta, 1, "cpu")  # the RNG put back: the real build gives the same bits
        act = None if one is None else one * batch
    else:
        act = _activation_bytes(model, meta, batch, "meta")
    free, where = (available, "this machine has") if available is not None else device_memory(device)
    need = TRAIN_BYTES_PER_PARAM * params + (act or 0)
    if free is None or need <= free:
        return
    acts = f" + {_gb(act)} of layer outputs for a batch of {batch}" if act else ""
    raise ModelError(f"{what}: training needs about {_gb(need)} ({params:,} parameters x {TRAIN_BYTES_PER_PARAM} bytes: "
                     f"fp32 weights, gradients and Adam's two moments{acts}), but {where} {_gb(free)} "
                     f"available; make the model smaller (its widths, layers) or the batch (train.batch_size)")


def _activation_bytes(model: nn.Module, meta, batch: int, device: str) -> int | None:
    """Bytes of every leaf module's output for one batch, from a forward on `device` (meta: nothing is
    allocated); None if the model cannot run there."""
    total = [0]

    def count(module, args, out):
        for t in (out if isinstance(out, (tuple, list)) else (out,)):
            if isinstance(t, torch.Tensor):
                total[0] += t.numel() * t.element_size()

    leaves = [m for m in model.modules() if not any(True for _ in m.children())]
    hooks = [m.register_forward_hook(count) for m in leaves]
    try:
        with torch.device(device), torch.no_grad():
            model.eval()
            model(torch.zeros(batch, *meta.input_shape, dtype=meta.input_dtype))
    except Exception:  # noqa: BLE001
        return None
    finally:
        for h in hooks:
            h.remove()
    return total[0]


def check_fit(model: nn.Module, data) -> None:
    """Raise a one-line DataError or ModelError if `model` cannot train on `data` (a DataBundle).

    Checks: every split present is non-empty; the model runs on a probe batch of 2 (`dry_run`);
    classification labels lie in [0, num_classes) (the whole label tensor of in-memory splits, the
    probe's labels otherwise) and are integer ids; the output is wide enough for the classes
    (multiclass: >= num_classes; language model: >= the vocabulary); regression and reconstruction
    outputs have the target's size per sample (models with their own `compute_loss` excepted).

    >>> from powertrain.data import DataBundle
    >>> data = DataBundle.from_tensors((torch.randn(8, 4), torch.arange(8) % 3))
    >>> check_fit(nn.Linear(4, 3), data)
    >>> check_fit(nn.Linear(4, 2), data)
    Traceback (most recent call last):
    ...
    powertrain.errors.ModelError: Linear: outputs 2 values per sample, but the data has 3 classes; make the last layer output at least 3 (e.g. nn.Linear(..., 3)), or check data.num_classes
    """
    for name in SPLITS:
        split = getattr(data, name, None)
        if split is not None and len(split) == 0:
            raise DataError(f"data: the {name} split is empty (0 samples); every split needs at least one sample: "
                            f"check the data files and data.val_fraction, or leave the {name} split out (None)")
    probe = next(data.train.batches(torch.arange(min(2, len(data.train))), 2))
    out = dry_run(model, probe[0])
    meta, cls = data.meta, type(model).__name__
    out = out[0] if isinstance(out, (tuple, list)) else out
    for name in SPLITS:
        split = getattr(data, name, None)
        if split is not None:
            tensors = getattr(split, "tensors", None)
            _check_labels(meta, name, tensors[-1] if tensors else probe[-1])
    if not isinstance(out, torch.Tensor) or out.dim() == 0:
        return
    y, batch = probe[-1], len(probe[0])
    if meta.task == "multiclass" and meta.num_classes and out.shape[-1] < meta.num_classes:
        n = meta.num_classes
        raise ModelError(f"{cls}: outputs {out.shape[-1]} values per sample, but the data has {n} classes; make the "
                         f"last layer output at least {n} (e.g. nn.Linear(..., {n})), or check data.num_classes")
    vocab = meta.vocab_size if meta.task == "language_model" else None
    if vocab and out.shape[-1] < vocab:
        raise ModelError(f"{cls}: outputs {out.shape[-1]} logits per token, but the vocabulary has {vocab} tokens; "
                         f"set the model's vocab_size to {vocab}")
    if getattr(model, "compute_loss", None) is not None:
        return  # its own loss decides what the outputs mean
    target = probe[0] if meta.task == "reconstruction" else y
    if meta.task in ("binary", "regression", "reconstruction") and out.numel() // batch != target.numel() // batch:
        what = {"binary": "one logit", "regression": "one value per target",
                "reconstruction": "the input's size"}[meta.task]
        raise ModelError(f"{cls}: outputs {out.numel() // batch} values per sample, but the {meta.task} target has "
                         f"{target.numel() // batch}; a {meta.task} model outputs {what}: change its last layer")


def _check_labels(meta, split: str, y: torch.Tensor) -> None:
    if meta.task not in ("multiclass", "binary", "language_model") or y.numel() == 0:
        return
    n = 2 if meta.task == "binary" else meta.num_classes or meta.vocab_size
    if meta.task != "binary" and y.is_floating_point():
        raise DataError(f"data: the {split} labels are {str(y.dtype).replace('torch.', '')}, but {meta.task} labels "
                        f"are integer class ids; convert them with y.long()")
    if n is None:
        return
    lo, hi = float(y.min()), float(y.max())
    if lo < 0 or hi >= n or (meta.task == "binary" and hi > 1):
        hi_ok = 1 if meta.task == "binary" else n - 1
        raise DataError(f"data: the {split} labels range over [{lo:g}, {hi:g}], but the data has {n} classes; labels "
                        f"must lie in [0, {hi_ok}]: number the classes from 0, or raise num_classes")
