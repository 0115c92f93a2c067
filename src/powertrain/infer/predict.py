"""`powertrain predict RUN INPUT`: run a trained model on a file and bill the inference.

INPUT is read as the run's data would be:

- `.csv` (or .tsv): one sample per row. A run on a CSV table takes the same columns by name (the target and
  any other column may be there too; categorical columns are one-hot encoded as in training); other runs
  take rows of numbers, with or without a header.
- `.npy`: one sample of the input shape, or a batch of them.
- an image (.png, .jpg, ...) or a folder of images: for runs on image data, resized to the training size.
- a language model (gpt-stdlib): INPUT is the prompt, or a text file holding it; the prediction is the
  greedy continuation (`--max-new-tokens`).

Inputs are in the dataset's own units (pixels, raw feature values); the standardisation learnt from the
train split is applied here. The forward passes run in a Meter window, so the inference gets a bill on the
same terms as training (FLOPs, time, energy with its method, CO2e).

>>> result = predict("runs/digits-mlp", "digits.npy")  # doctest: +SKIP
>>> result["predictions"][0], result["bill"]["j_per_inference_sample"]  # doctest: +SKIP
({'index': 0, 'class': '3', 'probability': 0.98}, 0.000131)
"""
from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from ..errors import DataError, RecipeError
from ..run.rundir import RunDir

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")


# ---------------------------------------------------------------- reading the input
def _is_number(text: str) -> bool:
    try:
        float(text)
        return True
    except ValueError:
        return False


def _read_csv(path: Path, meta) -> np.ndarray:
    delimiter = "\t" if path.suffix.lower() == ".tsv" else ","
    with open(path, newline="") as f:
        rows = [r for r in csv.reader(f, delimiter=delimiter) if r and any(c.strip() for c in r)]
    if not rows:
        raise DataError(f"'{path}': no rows; give one sample per row")
    names = meta.extra.get("feature_names")
    header = rows[0] if not all(_is_number(c) for c in rows[0]) else None
    body = rows[1:] if header else rows
    if names and header:  # a run on a CSV table: its feature columns by name
        header = [h.strip() for h in header]
        cols = {h: i for i, h in enumerate(header)}
        out = np.zeros((len(body), len(names)), dtype=np.float64)
        for j, name in enumerate(names):
            if name in cols:
                idx = cols[name]
                for i, r in enumerate(body):
                    try:
                        out[i, j] = float(r[idx])
                    except (ValueError, IndexError):
                        raise DataError(f"'{path}' row {i + 2}, column '{name}': expected a number, got "
                                        f"'{r[idx] if idx < len(r) else ''}'") from None
            elif "=" in name and name.split("=", 1)[0] in cols:  # a one-hot column of a categorical feature
                col, value = name.split("=", 1)
                out[:, j] = [1.0 if r[cols[col]].strip() == value else 0.0 for r in body]
            else:
                missing = [n.split("=", 1)[0] for n in names if n not in cols and n.split("=", 1)[0] not in cols]
                raise DataError(f"'{path}': no column '{missing[0]}', which the run was trained on; the file needs "
                                f"the columns {', '.join(dict.fromkeys(n.split('=', 1)[0] for n in names))}")
        return out
    width = int(np.prod(meta.input_shape))
    try:
        values = np.array([[float(c) for c in r] for r in body], dtype=np.float64)
    except ValueError:
        raise DataError(f"'{path}': expected rows of numbers ({width} per row, for input shape "
                        f"{tuple(meta.input_shape)})") from None
    if values.ndim != 2 or values.shape[1] != width:
        raise DataError(f"'{path}': rows of {values.shape[1] if values.ndim == 2 else '?'} numbers; this run's model "
                        f"takes {width} per row (input shape {tuple(meta.input_shape)})")
    return values


def _read_images(paths: list[Path], meta) -> np.ndarray:
    from PIL import Image

    shape = tuple(meta.input_shape)
    if len(shape) != 3 or shape[0] not in (1, 3) or meta.normalization is None:
        raise DataError(f"an image input needs a run trained on image files (fashion, cifar10, an image folder); "
                        f"this run's data takes input shape {shape}: give a .npy or .csv file in its own units")
    c, h, w = shape
    out = []
    for p in paths:
        try:
            img = Image.open(p).convert("L" if c == 1 else "RGB").resize((w, h))
        except OSError as e:
            raise DataError(f"'{p}': not a readable image ({e})") from None
        a = np.asarray(img, dtype=np.float32)  # pixels 0-255: the dataset's own units
        out.append(a[None] if c == 1 else a.transpose(2, 0, 1))
    return np.stack(out)


def read_input(path: str | Path, meta) -> tuple[torch.Tensor, list[str]]:
    """(model inputs, a name for each sample) from a file or folder: read in the dataset's own units, then
    preprocessed as the data loader did (train/load.py: Units, which an exported ONNX model bakes in)."""
    from ..train.load import Units

    x, names = read_raw(path, meta)
    return Units(meta).to_model(x), names


def _finite(x: np.ndarray, path: Path) -> np.ndarray:
    with np.errstate(over="ignore"):  # 1e308 becomes inf in float32: that is what is looked for
        bad = ~np.isfinite(x.astype(np.float32)) if x.dtype.kind == "f" else None
    if bad is not None and bad.any():
        i = int(np.argwhere(bad.reshape(len(x), -1))[0][0]) if x.ndim else 0
        raise DataError(f"'{path}': sample {i} holds a value that is not a finite float32 number (NaN, inf, or "
                        f"beyond +-3.4e38); fix or drop it")
    return x


def read_raw(path: str | Path, meta) -> tuple[torch.Tensor, list[str]]:
    """(inputs in the dataset's own units: raw feature values, pixels 0-255; a name for each sample)."""
    path = Path(path)
    shape = tuple(meta.input_shape)
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            raise DataError(f"'{path}': a folder with no images ({', '.join(IMAGE_SUFFIXES)})")
        return torch.from_numpy(_read_images(files, meta)).float(), [p.name for p in files]
    if not path.is_file():
        raise DataError(f"input '{path}' does not exist; give a .csv, .npy or image file (or a prompt, for a language model)")
    suffix = path.suffix.lower()
    if suffix in IMAGE_SUFFIXES:
        return torch.from_numpy(_read_images([path], meta)).float(), [path.name]
    if suffix == ".npy":
        try:
            x = np.load(path, allow_pickle=False).astype(np.float64)
        except (ValueError, OSError) as e:
            raise DataError(f"'{path}': not a readable .npy array ({e})") from None
        if x.shape == shape or (x.size == int(np.prod(shape)) and x.ndim <= 1):
            x = x.reshape(1, *shape)
        elif x.shape[1:] != shape:
            if x.ndim >= 2 and int(np.prod(x.shape[1:])) == int(np.prod(shape)):
                x = x.reshape(len(x), *shape)
            else:
                raise DataError(f"'{path}': array of shape {x.shape}; this run's model takes {shape} per sample "
                                f"(or a batch: (N, {', '.join(map(str, shape))}))")
    elif suffix in (".csv", ".tsv", ".txt"):
        x = _read_csv(path, meta).reshape(-1, *shape)
    else:
        raise DataError(f"'{path}': unknown input type '{suffix}'; give .csv, .npy, or an image ({', '.join(IMAGE_SUFFIXES)})")
    x = _finite(x, path)
    dtype = torch.float32 if meta.input_dtype == torch.float32 else meta.input_dtype
    return torch.from_numpy(np.ascontiguousarray(x)).to(dtype), [str(i) for i in range(len(x))]


# ---------------------------------------------------------------- predicting
def _describe(outputs: torch.Tensor, meta, names: list[str]) -> list[dict]:
    task = meta.task
    classes = meta.class_names
    rows = []
    if task == "multiclass":
        probs = torch.softmax(outputs.float(), dim=-1)
        p, k = probs.max(dim=-1)
        for n, pi, ki in zip(names, p.tolist(), k.tolist()):
            rows.append({"input": n, "class": classes[ki] if classes else str(ki), "probability": pi})
    elif task == "binary":
        probs = torch.sigmoid(outputs.float().reshape(len(outputs), -1)[:, 0])
        for n, pi in zip(names, probs.tolist()):
            k = int(pi >= 0.5)
            rows.append({"input": n, "class": classes[k] if classes else str(k), "probability": pi if k else 1 - pi})
    elif task == "regression":
        from ..train.load import Units

        values = Units(meta).to_target(outputs.float().reshape(len(outputs), -1))
        for n, v in zip(names, values.tolist()):
            rows.append({"input": n, "value": v[0] if len(v) == 1 else v})
    else:  # reconstruction: the mean squared error of each input's reconstruction (model units)
        rows = [{"input": n} for n in names]
    return rows


def predict(run_dir: str | Path, input: str | Path, batch_size: int = 256, max_new_tokens: int = 100,
            checkpoint: Optional[str] = None) -> dict:
    """{"predictions": [...], "outputs": tensor, "bill": {...}} for the run's final model (or the checkpoint
    named, e.g. 'step-00000040') on `input`."""
    from ..measure.bill import BillRecord, carbon_model, make_bill
    from ..train.load import load_model
    from ..measure import Meter
    from ..models import count_params

    if batch_size < 1:
        raise RecipeError(f"--batch-size: expected a whole number >= 1, got {batch_size}")
    run = RunDir.open(run_dir)
    model, recipe, trainer = load_model(run.path, checkpoint)
    meta = trainer.data.meta
    meter = Meter(carbon=carbon_model(recipe.run))
    fps = getattr(trainer, "forward_flops_per_sample", None) or 0
    model.eval()
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    if meta.vocab is not None:  # a language model: the input is the prompt
        p = Path(input)
        prompt = p.read_text() if len(str(input)) < 4096 and p.is_file() else str(input)
        if not prompt:
            raise RecipeError("predict: the prompt is empty; give some text, e.g. 'def '")
        idx = meta.vocab.encode(prompt).to(device)
        meter.begin("final_eval")
        with torch.no_grad():
            out = model.generate(idx, max_new_tokens, temperature=0.0)
        meter.end("final_eval", flops=max_new_tokens * fps)  # each new token: one forward over <= block_size tokens
        text = meta.vocab.decode(out)
        preds, outputs, n = [{"input": "prompt", "text": text}], out, max(max_new_tokens, 1)
        note = "FLOPs: one forward over a full block per new token (an upper bound)"
    else:
        x, names = read_input(input, meta)
        if x.shape[1:] != tuple(meta.input_shape):
            raise DataError(f"'{input}': samples of shape {tuple(x.shape[1:])}; the model takes {tuple(meta.input_shape)}")
        chunks = []
        meter.begin("final_eval")
        with torch.no_grad():
            for i in range(0, len(x), batch_size):
                out = model(x[i:i + batch_size].to(device))
                out = out[0] if isinstance(out, (tuple, list)) else out  # a VAE: (reconstruction, mu, logvar)
                chunks.append(out.float().cpu())
        meter.end("final_eval", flops=len(x) * fps)
        outputs = torch.cat(chunks)
        preds, n, note = _describe(outputs, meta, names), len(x), None
        if meta.task == "reconstruction":
            err = ((outputs.reshape(len(x), -1) - x.reshape(len(x), -1)) ** 2).mean(dim=1)
            for row, e in zip(preds, err.tolist()):
                row["mse"] = e
    bill = make_bill(meter, BillRecord(params=count_params(model), flops_per_sample_forward=fps or None,
                                       samples_evaluated=n, device=device, precision=getattr(trainer, "precision", "fp32")))
    return {"run": str(run.path), "checkpoint": checkpoint or "final", "predictions": preds, "outputs": outputs,
            "samples": n, "bill": bill, "note": note}


def inference_line(result: dict) -> str:
    """One line: the inference's FLOPs, time, energy (with its method), J per sample and CO2e."""
    from ..measure.bill import _si

    b = result["bill"]
    w = b["energy"]["windows"].get("final_eval") or {}
    e = b["energy"]["total_j"]
    line = (f"inference: {result['samples']} sample{'s' if result['samples'] != 1 else ''}, {_si(w.get('flops'), 'FLOP')}, "
            f"{_si(b['time_s']['total'], 's')}, {_si(e, 'J')} [{b['energy']['method']}], "
            f"{_si(b['j_per_inference_sample'], 'J')} per sample, CO2e {_si(b['co2e_g'], 'g')}")
    return line + (f"; {result['note']}" if result.get("note") else "")


def format_predictions(result: dict) -> str:
    rows = result["predictions"]
    if rows and "text" in rows[0]:
        return rows[0]["text"]
    lines = []
    for r in rows:
        parts = [f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in r.items() if k != "input"]
        lines.append(f"{r['input']}: " + "  ".join(parts))
    return "\n".join(lines)


def write_predictions(result: dict, out: str | Path) -> Path:
    """--out FILE: .npy (the raw outputs), .json (predictions and bill) or .csv (one row per prediction)."""
    from ..run.atomic import atomic_write, dumps

    out = Path(out)
    suffix = out.suffix.lower()
    if suffix == ".npy":
        atomic_write(out, lambda tmp: np.save(open(tmp, "wb"), result["outputs"].numpy()))
    elif suffix == ".json":
        doc = {k: v for k, v in result.items() if k != "outputs"}
        text = dumps(doc, indent=2, default=_plain)
        atomic_write(out, lambda tmp: tmp.write_text(text))
    elif suffix == ".csv":
        keys = list(dict.fromkeys(k for r in result["predictions"] for k in r))

        def write(tmp: Path) -> None:
            with open(tmp, "w", newline="") as f:
                w = csv.DictWriter(f, fieldnames=keys)
                w.writeheader()
                w.writerows(result["predictions"])

        atomic_write(out, write)
    else:
        raise RecipeError(f"--out '{out}': expected a .csv, .json or .npy file name")
    return out


def _plain(x):
    if isinstance(x, float) and not math.isfinite(x):
        return None
    return str(x)


__all__ = ["predict", "read_input", "inference_line", "format_predictions", "write_predictions"]
