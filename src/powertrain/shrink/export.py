"""Export a run's final model: ONNX (checked against torch with onnxruntime) or a single safetensors file.

ONNX goes through torch's dynamo exporter (`torch.onnx.export(..., dynamo=True)`, which needs
`onnxscript`: `pip install 'powertrain[export]'`) with a dynamic batch dimension. The graph takes inputs
in the dataset's own units (raw feature values, pixels 0-255): the run's standardisation is inside it, and a
regression's outputs come out in the target's units, so onnxruntime on raw inputs gives what `powertrain
predict` gives (train/load.py: RawModel). Its metadata_props name the task, class names, input shape, dtype
and units, the output, the recipe, the run and the powertrain version. The exported file is then run by
onnxruntime (CPU) on real samples of the run's data, at the export batch size and at 1, and its outputs are
compared with the torch model's: the largest absolute difference is reported against a bar of 1e-4 (fp32).

safetensors: the weights of the final model (best under early stopping with restore_best, else the
newest checkpoint) in one file, with the recipe in its metadata; a quantized run's int8 file as is.

An int8 (quantized) run is not exported to ONNX: torch's exporter does not translate the eager-mode
quantized kernels. Export its parent, and quantize the ONNX file with onnxruntime.quantization.

>>> from powertrain.shrink import export
>>> result = export("runs/digits-mlp", format="onnx")  # doctest: +SKIP
>>> result["max_abs_diff"] <= result["bar"]             # doctest: +SKIP
True
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import warnings
from pathlib import Path
from typing import Optional

import torch
import yaml

from ..errors import ModelError, PowertrainError, RecipeError
from ..run.rundir import RunDir
from ..train.load import RawModel, Units, load_model

FORMATS = ("onnx", "safetensors")
BAR_FP32 = 1e-4


@contextlib.contextmanager
def _quiet_exporter():
    """The exporter logs a warning per torchvision op it skips, and a FutureWarning from torch's pytree."""
    log = logging.getLogger("torch.onnx._internal.exporter._registration")
    level = log.level
    log.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", category=FutureWarning)
            warnings.filterwarnings("ignore", category=DeprecationWarning)
            warnings.filterwarnings("ignore", message=".*were assigned during export")  # nn.GRU's flat weights
            yield
    finally:
        log.setLevel(level)


def _samples(trainer, n: int) -> torch.Tensor:
    split = trainer.data.test or trainer.data.val or trainer.data.train
    n = max(2, min(n, len(split)))  # a batch of 1 would be specialised into the graph
    return next(split.batches(torch.arange(n), n))[0].cpu()


def _outputs(out) -> list[torch.Tensor]:
    return [out] if isinstance(out, torch.Tensor) else [t for t in out if isinstance(t, torch.Tensor)]


def onnx_parity(onnx_path: Path, model: torch.nn.Module, batches: list[torch.Tensor]) -> tuple[float, float]:
    """(largest |torch - onnxruntime|, largest |torch|) over every output of every batch."""
    import numpy as np
    import onnxruntime as ort

    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    worst, largest = 0.0, 0.0
    with torch.no_grad():
        for x in batches:
            ours = _outputs(model(x))
            theirs = session.run(None, {name: x.numpy()})
            for a, b in zip(ours, theirs):
                worst = max(worst, float(np.abs(a.numpy().astype(np.float64) - b.astype(np.float64)).max()))
                largest = max(largest, float(a.abs().max()))
    return worst, largest


def _load(run: RunDir, checkpoint: Optional[str]):
    """(model in eval mode, trainer holding the data) of the run's final weights or the named checkpoint."""
    if checkpoint is None:
        model, _, trainer = load_model(run.path)
        return model, trainer
    from ..train.load import load_trainer

    trainer = load_trainer(run, checkpoint)
    return trainer.model.eval(), trainer


def export(run_dir: str | Path, format: str = "onnx", out: Optional[str | Path] = None, samples: int = 64,
           checkpoint: Optional[str] = None) -> dict:
    """Write the run's final model as `format` to `out` (default RUN_DIR/export/model.onnx or
    model.safetensors). Returns {"format", "path", "bytes"} and, for ONNX, "max_abs_diff" (torch vs
    onnxruntime on `samples` data samples and on 1), "max_abs_output" (largest |torch output|, for scale),
    "bar" (1e-4) and "ok". `checkpoint` (e.g. 'step-00000040'): that checkpoint instead of the final
    weights (a damaged newest checkpoint is refused, naming it).

    >>> export("runs/mnist1d-cnn", format="safetensors")["path"]  # doctest: +SKIP
    'runs/mnist1d-cnn/export/model.safetensors'
    """
    if format not in FORMATS:
        raise RecipeError(f"format (--format): expected one of {', '.join(FORMATS)}, got '{format}'")
    if isinstance(samples, bool) or not isinstance(samples, int) or samples < 2:
        raise RecipeError(f"samples (--samples): expected a whole number >= 2, got {samples!r}")
    run = RunDir.open(run_dir)
    path, recipe = run.path, run.recipe()
    quantized = run.kind == "quantized" and not checkpoint
    if quantized and format == "onnx":
        raise RecipeError(f"'{path}' is an int8 (quantized) run: torch's ONNX exporter does not translate eager-mode "
                          f"quantized kernels; export its parent with --format onnx and quantize the .onnx file with "
                          f"onnxruntime.quantization, or use --format safetensors")
    dest = Path(out) if out else path / "export" / f"model.{format}"
    dest.parent.mkdir(parents=True, exist_ok=True)
    if format == "safetensors":
        if quantized:
            shutil.copyfile(run.final_weights(), dest)
        else:
            from safetensors.torch import save_model

            model = _load(run, checkpoint)[0]
            save_model(model, str(dest), metadata={"format": "powertrain-fp32", "run": str(path.resolve()),
                                                   "recipe": yaml.safe_dump(recipe.to_dict(), sort_keys=False)})
        return {"format": format, "path": str(dest), "bytes": dest.stat().st_size}
    try:
        import onnxruntime  # noqa: F401
        import onnxscript  # noqa: F401
    except ImportError as e:
        raise PowertrainError(f"--format onnx needs {e.name}: pip install 'powertrain[export]' "
                              f"(onnx, onnxruntime, onnxscript)") from None
    model, trainer = _load(run, checkpoint)
    meta = trainer.data.meta
    units = Units(meta)
    model = RawModel(model.cpu().eval(), units).eval()  # raw inputs in, the run's preprocessing inside the graph
    x = units.to_raw(_samples(trainer, samples))
    tmp = dest.with_name(f".{dest.name}.tmp{os.getpid()}")
    try:
        with _quiet_exporter():
            dims = {0: torch.export.Dim("batch")}
            if meta.task == "language_model" and x.dim() == 2:  # a prompt of any length up to the block
                dims[1] = torch.export.Dim("tokens", max=x.shape[1])
            try:
                program = torch.onnx.export(model, (x,), dynamo=True, dynamic_shapes=(dims,),
                                            input_names=["input"], output_names=["output"], verbose=False)
            except Exception as e:  # noqa: BLE001  (the exporter raises many types, with pages of text)
                why = next((line.strip() for line in reversed(str(e).splitlines()) if line.strip()
                            and not line.startswith(("(", "-", "#"))), type(e).__name__)
                raise ModelError(f"model '{recipe.model.name}' of '{path}' cannot be exported to ONNX: torch's "
                                      f"exporter failed ({why[:200]}); use --format safetensors") from None
            program.save(str(tmp))  # one file: small models need no external data
        _write_metadata(tmp, metadata(run, recipe, meta, units, checkpoint))
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)
    diff, largest = onnx_parity(dest, model, [x, x[:1]])
    bar = BAR_FP32 * max(1.0, abs(units.out_std))  # a regression's outputs are scaled to the target's units
    return {"format": format, "path": str(dest), "bytes": dest.stat().st_size, "max_abs_diff": diff,
            "max_abs_output": largest,
            "bar": bar, "ok": diff <= bar, "samples": len(x), "input": units.what,
            "checked": f"onnxruntime {onnxruntime.__version__} CPU vs torch {torch.__version__}, "
                       f"batches of {len(x)} and 1, raw inputs"}


def metadata(run: RunDir, recipe, meta, units: Units, checkpoint: Optional[str]) -> dict[str, str]:
    """What an ONNX user needs without reading powertrain's code, as the model's metadata_props (text)."""
    from ..settings import VERSION

    task = meta.task
    output = {"multiclass": "logits, one per class (softmax for probabilities; argmax is the class)",
              "binary": "one logit (sigmoid for the probability of class 1)",
              "regression": "values in the target's units (the target's standardisation is undone inside)",
              "reconstruction": "the reconstructed input, in the model's standardised units",
              "language_model": "logits over the vocabulary for every position"}.get(task, "the model's outputs")
    return {"powertrain_version": VERSION, "run": str(run.path.resolve()), "checkpoint": checkpoint or "final",
            "recipe": yaml.safe_dump(recipe.to_dict(), sort_keys=False), "task": task,
            "input_name": "input", "input_shape": json.dumps(["batch", *meta.input_shape]),
            "input_dtype": str(meta.input_dtype).replace("torch.", ""),
            "input_units": units.what, "preprocessing": "inside the graph: feed raw inputs",
            "output": output, "class_names": json.dumps(meta.class_names or [])}


def _write_metadata(path: Path, props: dict[str, str]) -> None:
    import onnx

    m = onnx.load(str(path))
    del m.metadata_props[:]
    for k, v in props.items():
        m.metadata_props.add(key=k, value=v)
    m.doc_string = (f"powertrain {props['powertrain_version']} export of {props['run']}: {props['task']}; input "
                    f"{props['input_shape']} {props['input_dtype']} in raw units ({props['input_units']}); output "
                    f"{props['output']}")
    onnx.save(m, str(path))
