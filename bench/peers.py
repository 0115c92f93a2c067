"""Peers: the mnist1d-cnn recipe's model trained the same way in a plain PyTorch loop, PyTorch Lightning,
Keras 3 (torch backend) and powertrain, in one process. Same data, AdamW (lr, betas, weight decay),
batch size, number of steps, constant learning rate and seed; fp32 on CPU. Runs are interleaved
(plain, Lightning, Keras, powertrain, plain, ...) and the best steps/s of each is kept, so machine
noise hits all alike. Each is timed from its framework's train-start hook to the end of its last step
(setup, evaluation and saving excluded); test accuracy is computed the same way for all afterwards.

The three PyTorch peers see the same batches in the same order (powertrain's epoch order, fed to
Lightning by a batch sampler over tensor indexing) and start from the same weights, so their final
weights should be identical; the Keras model has the same layers and shapes but Keras's own
initialisers (Glorot) and data order, so its accuracy differs by chance, not by framework.

    pip install -e '.[bench]'            # lightning, keras
    python bench/peers.py                # writes the table into docs/benchmarks.md
    python bench/peers.py --steps 5 --repeats 1 --no-write   # the test's tiny mode
"""
from __future__ import annotations

import argparse
import io
import json
import math
import os
import sys
import tempfile
import time
import warnings
from pathlib import Path

os.environ.setdefault("KERAS_BACKEND", "torch")

import torch
import torch.nn.functional as F

import powertrain
from powertrain import Callback, Trainer, data, models
from powertrain.train.callbacks import Progress

from docs_section import write_section

MISSING = "{name} is not installed: pip install -e '.[bench]' (the bench extra: lightning, keras)"


def epoch_order(n: int, seed: int, epoch: int) -> torch.Tensor:
    """powertrain's data order (Trainer.epoch_order): a function of (seed, epoch)."""
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed * 1_000_003 + epoch))


def index_batches(n: int, batch: int, steps: int, seed: int):
    """The index batches of `steps` steps, epoch after epoch."""
    step, epoch = 0, 0
    while True:
        order = epoch_order(n, seed, epoch)
        for i in range(0, n, batch):
            if step == steps:
                return
            yield order[i:i + batch]
            step += 1
        epoch += 1


def build_torch(recipe, meta) -> torch.nn.Module:
    torch.manual_seed(recipe.run.seed)
    return models.build(recipe.model.model_dump(), meta)


def adamw(params, tc):
    return torch.optim.AdamW(params, lr=tc.lr, betas=tc.betas, weight_decay=tc.weight_decay)


def accuracy(model, x, y) -> float:
    model.eval()
    with torch.no_grad():
        return (model(x).argmax(1) == y).float().mean().item()


# ---------------------------------------------------------------- the four peers
def plain(recipe, bundle, steps):
    """The loop a PyTorch user writes. Returns (seconds, model)."""
    tc, seed = recipe.train, recipe.run.seed
    model = build_torch(recipe, bundle.meta)
    opt = adamw(model.parameters(), tc)
    x, y = bundle.train.tensors
    model.train()
    t0 = time.perf_counter()
    for idx in index_batches(len(x), tc.batch_size, steps, seed):
        opt.zero_grad(set_to_none=True)
        loss = F.cross_entropy(model(x[idx]), y[idx])
        loss.backward()
        opt.step()
        loss.item()  # what a loop that prints its loss pays
    return time.perf_counter() - t0, model


class StepClock(Callback):
    def on_fit_start(self, trainer):
        self.t0 = time.perf_counter()

    def on_step_end(self, trainer, loss):
        self.t1 = time.perf_counter()


def ours(recipe, bundle, steps, tmp: Path):
    """powertrain as a user runs it: metering, progress lines, metrics.jsonl, the final checkpoint."""
    model = build_torch(recipe, bundle.meta)
    clock = StepClock()
    cfg = recipe.train.model_copy(update={"eval_every_epochs": 10**6, "max_steps": steps})
    Trainer(model, bundle, cfg, run_dir=tmp, callbacks=[clock, Progress(io.StringIO())], seed=recipe.run.seed).fit()
    return clock.t1 - clock.t0, model


def lightning(recipe, bundle, steps, bill: Path | None = None):
    """`bill`: a folder for powertrain's BillCallback (the run directory it writes), else none."""
    import lightning as L

    tc, seed = recipe.train, recipe.run.seed
    x, y = bundle.train.tensors

    class Batches(torch.utils.data.Dataset):  # batched by tensor indexing, as powertrain and the plain loop do
        def __len__(self):
            return len(x)

        def __getitems__(self, idx):
            idx = torch.as_tensor(idx)
            return x[idx], y[idx]

    class Sampler:  # powertrain's order, one epoch per iteration; the last epoch cut at `steps`
        def __init__(self):
            self.epoch = 0

        def __len__(self):
            return math.ceil(len(x) / tc.batch_size)

        def __iter__(self):
            order = epoch_order(len(x), seed, self.epoch)
            self.epoch += 1
            return iter([order[i:i + tc.batch_size].tolist() for i in range(0, len(x), tc.batch_size)])

    class Module(L.LightningModule):
        def __init__(self, net):
            super().__init__()
            self.net = net

        def training_step(self, batch, i):
            xb, yb = batch
            return F.cross_entropy(self.net(xb), yb)

        def configure_optimizers(self):
            return adamw(self.net.parameters(), tc)

    class Clock(L.Callback):
        def on_train_start(self, trainer, module):
            self.t0 = time.perf_counter()

        def on_train_batch_end(self, trainer, module, outputs, batch, i):
            self.t1 = time.perf_counter()

    net, clock = build_torch(recipe, bundle.meta), Clock()
    loader = torch.utils.data.DataLoader(Batches(), batch_sampler=Sampler(), collate_fn=lambda b: b,
                                         generator=torch.Generator())  # its per-iterator seed not from the global RNG
    callbacks = [clock]
    if bill is not None:  # before the clock: the last step's time includes the callback's work
        from powertrain.integrations.lightning import BillCallback

        callbacks = [BillCallback(out=bill, model="net"), clock]
    trainer = L.Trainer(max_steps=steps, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, callbacks=callbacks)
    trainer.fit(Module(net), loader)
    return clock.t1 - clock.t0, net


def keras_model(recipe, meta):
    """The recipe's CNN in Keras layers: the same layers and shapes (channels last), BatchNorm with
    PyTorch's momentum and epsilon; Keras's own initialisers."""
    import keras
    from keras import layers

    m = recipe.model
    c, length = meta.input_shape
    out = [keras.Input((length, c))]
    for ch, p in zip(m.conv, m.pool):
        out += [layers.Conv1D(ch, m.kernel, padding=m.padding),
                layers.BatchNormalization(momentum=0.9, epsilon=1e-5), layers.ReLU()]
        if p > 1:
            out.append(layers.MaxPooling1D(p))
    out.append(layers.Flatten())
    for width in m.dense:
        out += [layers.Dropout(m.dropout), layers.Dense(width), layers.ReLU()]
    out += [layers.Dropout(m.dropout), layers.Dense(meta.num_classes)]
    return keras.Sequential(out)


def keras_run(recipe, bundle, steps, bill: Path | None = None):
    """Keras's own way: model.fit on arrays, shuffled each epoch by Keras, `steps` steps in all; `bill`: a
    folder for powertrain's BillCallback."""
    import keras

    tc = recipe.train
    keras.utils.set_random_seed(recipe.run.seed)
    model = keras_model(recipe, bundle.meta)
    opt = keras.optimizers.AdamW(learning_rate=tc.lr, weight_decay=tc.weight_decay, beta_1=tc.betas[0],
                                 beta_2=tc.betas[1], epsilon=1e-8)
    model.compile(optimizer=opt, loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True), jit_compile=False)
    x, y = bundle.train.tensors
    x, y = x.transpose(1, 2).numpy(), y.numpy()
    per_epoch = math.ceil(len(x) / tc.batch_size)
    if steps < per_epoch:  # the tiny mode: one short epoch
        x, y = x[:steps * tc.batch_size], y[:steps * tc.batch_size]
    epochs = max(1, steps // per_epoch)

    class Clock(keras.callbacks.Callback):
        def on_train_begin(self, logs=None):
            self.t0 = time.perf_counter()

        def on_train_batch_end(self, batch, logs=None):
            self.t1 = time.perf_counter()

    clock = Clock()
    callbacks = [clock]
    if bill is not None:  # before the clock, as for Lightning
        from powertrain.integrations.keras import BillCallback

        callbacks = [BillCallback(out=bill), clock]
    model.fit(x, y, batch_size=tc.batch_size, epochs=epochs, shuffle=True, verbose=0, callbacks=callbacks)
    done = int(opt.iterations)
    return clock.t1 - clock.t0, model, done


def keras_accuracy(model, x, y) -> float:
    logits = model(x.transpose(1, 2).numpy(), training=False)
    return (torch.as_tensor(logits).argmax(1) == y).float().mean().item()


# ---------------------------------------------------------------- the bench
def available() -> dict[str, bool]:
    found = {}
    for name, module in (("Lightning", "lightning"), ("Keras", "keras")):
        try:
            __import__(module)
            found[name] = True
        except ImportError:
            print(MISSING.format(name=name), file=sys.stderr)
            found[name] = False
    return found


def bench(steps: int, repeats: int, recipe_name: str = "mnist1d-cnn") -> list[dict]:
    recipe = powertrain.load_recipe(recipe_name, ["train.compile=false", "train.precision=fp32",
                                                  "train.schedule=constant", "train.warmup_steps=0"])
    bundle = data.build(recipe.data.model_dump(), seed=recipe.run.seed)
    have = available()
    peers = {"plain PyTorch": plain, "powertrain": None}
    if have["Lightning"]:
        peers["PyTorch Lightning"] = lightning
    if have["Keras"]:
        peers["Keras 3 (torch backend)"] = keras_run
    billed = {name: fn for name, fn in peers.items() if fn in (lightning, keras_run)}  # each with its BillCallback too
    best = {name: math.inf for name in peers}
    best_billed = {name: math.inf for name in billed}
    results: dict = {}
    bills: dict = {}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(repeats):
            for name, fn in peers.items():
                out = ours(recipe, bundle, steps, Path(tmp) / f"run-{r}") if fn is None else fn(recipe, bundle, steps)
                best[name] = min(best[name], out[0])
                results[name] = out
                if name in billed:  # right after the same peer without it: noise hits both alike
                    folder = Path(tmp) / f"bill-{r}-{list(billed).index(name)}"
                    with_bill = billed[name](recipe, bundle, steps, bill=folder)
                    best_billed[name] = min(best_billed[name], with_bill[0])
                    bills[name] = json.loads((folder / "bill.json").read_text())  # before the folder goes
    x, y = bundle.test.tensors
    ref = results["plain PyTorch"][1].state_dict()
    rows = []
    for name in peers:
        model = results[name][1]
        keras_ = name.startswith("Keras")
        done = results[name][2] if keras_ else steps
        same = "n/a (own init)" if keras_ else str(all(torch.equal(ref[k], v) for k, v in model.state_dict().items()))
        rows.append({"peer": name, "steps": done, "steps_s": done / best[name],
                     "ratio": (done / best[name]) / (steps / best["plain PyTorch"]),
                     "accuracy": keras_accuracy(model, x, y) if keras_ else accuracy(model, x, y), "same": same})
        if name in best_billed:
            bill = bills[name]
            rows[-1].update(billed_s=best_billed[name], overhead=best_billed[name] / best[name] - 1,
                            bill_steps=bill["steps"], bill_flops=bill["flops"]["train_total"])
    return rows


def versions() -> str:
    out = [f"torch {torch.__version__}", f"powertrain {powertrain.__version__}"]
    for module in ("lightning", "keras"):
        try:
            out.append(f"{module} {__import__(module).__version__}")
        except ImportError:
            out.append(f"{module} not installed")
    return ", ".join(out)


def write_table(rows: list[dict]) -> str:
    lines = ["| peer | steps | steps/s | ratio to the plain loop | test accuracy | weights identical to the plain loop's |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['peer']} | {r['steps']} | {r['steps_s']:.1f} | {r['ratio']:.3f} | {r['accuracy']:.4f} | {r['same']} |")
    return "\n".join(lines)


def overhead_table(rows: list[dict]) -> str:
    lines = ["| framework | steps | seconds without | seconds with BillCallback | overhead | steps on the bill | "
             "training FLOPs on the bill |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        if "overhead" in r:
            lines.append(f"| {r['peer']} | {r['steps']} | {r['steps'] / r['steps_s']:.3f} | {r['billed_s']:.3f} | "
                         f"{r['overhead']:+.2%} | {r['bill_steps']} | {r['bill_flops']:.4g} |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=1080, help="optimizer steps per run (36 per epoch of MNIST-1D: 30 epochs)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--no-write", action="store_true", help="print the table only")
    args = p.parse_args()
    warnings.filterwarnings("ignore", module="lightning")
    import logging

    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    rows = bench(args.steps, args.repeats)
    table = write_table(rows)
    print(table)
    for r in rows:  # plain lines on stdout (the markdown table goes into the docs)
        if "overhead" in r:
            print(f"BillCallback overhead, {r['peer']}: {r['overhead']:+.2%} ({r['steps'] / r['steps_s']:.3f} s "
                  f"without, {r['billed_s']:.3f} s with; the bill counts {r['bill_steps']} steps)")
    if not args.no_write:
        write_section("Peers (bench/peers.py)",
                      f"The mnist1d-cnn recipe's model (fp32, AdamW lr 3e-3 wd 1e-2, constant LR, batch 100, "
                      f"{args.steps} steps, seed 0) in each framework, on CPU: {torch.get_num_threads()} threads, "
                      f"{versions()}, {time.strftime('%Y-%m-%d')}. Best of {args.repeats} interleaved runs each, "
                      f"timed from the train-start hook to the end of the last step. The PyTorch peers share "
                      f"the data order and the initial weights; Keras uses its own initialisers and shuffling "
                      f"(same layers and shapes), so its accuracy differs by chance.\n"
                      f"Command: `python bench/peers.py`\n\n{table}")
        if any("overhead" in r for r in rows):
            write_section("BillCallback overhead (bench/peers.py)",
                          f"The same run: each framework's peer above again with powertrain's BillCallback "
                          f"(powertrain.integrations.lightning / .keras), right after the run without it, best of "
                          f"{args.repeats} each, timed the same way (train-start hook to the end of the last step, "
                          f"the callback's per-step work and its one FLOP count on the first batch included; "
                          f"writing bill.json after training excluded). The Hugging Face Trainer is not in this "
                          f"bench.\nCommand: `python bench/peers.py`\n\n{overhead_table(rows)}")


if __name__ == "__main__":
    main()
