"""docs/examples.md runs as written: the source documents' ConvNet and AutoEncoder (seed 001) go to the
Trainer unchanged; the ConvNet's shape bug stops at Trainer construction with the message the page shows,
whatever the batch size; the padded ConvNet and the AutoEncoder train exactly like a plain PyTorch loop.

The page's code is the test's code: its python blocks are executed in order, and a python block followed
directly by a text block ending in `SomeError: message` must raise exactly that."""
from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import NamedTuple

import pytest
import torch
import torch.nn.functional as F

import powertrain.data
from powertrain import Callback, DataBundle, TrainConfig, Trainer, data
from powertrain.models.check import ShapeError, dry_run

sys.path.insert(0, str(Path(__file__).resolve().parent / "data"))
from datafiles import write_idx_dataset  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "examples.md"
SEEDS = ROOT.parent / "shared" / "seeds"
FENCE = re.compile(r"^```(\w*)\n(.*?)^```\n", re.S | re.M)


class Block(NamedTuple):
    lang: str
    code: str
    error: str | None  # the last line of a text block right after a python block: the error it must raise
    line: int  # of the code's first line in the file

    def compiled(self, path: Path):
        """Compiled so that tracebacks point at the block's lines in `path`."""
        return compile("\n" * (self.line - 1) + self.code, str(path), "exec")


def code_blocks(text: str) -> list[Block]:
    """The fenced blocks of a Markdown text; a python block followed by a text block with nothing but
    blank lines between them expects the text's last line as its error."""
    found = list(FENCE.finditer(text))
    out = []
    for i, m in enumerate(found):
        nxt = found[i + 1] if i + 1 < len(found) else None
        error = None
        if m.group(1) == "python" and nxt and nxt.group(1) == "text" and not text[m.end():nxt.start()].strip():
            error = nxt.group(2).strip().splitlines()[-1]
        out.append(Block(m.group(1), m.group(2), error, text.count("\n", 0, m.start(2)) + 1))
    return out


def python_blocks(path: Path) -> list[Block]:
    return [b for b in code_blocks(path.read_text()) if b.lang == "python"]


def documents_classes() -> dict[str, tuple[type, str]]:
    """{"ConvNet": as written, "ConvNetPadded": the fix, "AutoEncoder": as written}, each (class, source block):
    the page's class blocks executed in order, each in a copy of the names defined before it (the imports of the
    first block), so that redefining ConvNet leaves the first class working (its `super(ConvNet, self)` looks
    the name up in its own globals)."""
    classes, names = {}, {}
    for block in python_blocks(DOC):
        if not re.search(r"^class ", block.code, re.M):
            continue
        ns = dict(names)
        exec(block.compiled(DOC), ns)
        names.update(ns)
        name = re.search(r"^class (\w+)", block.code, re.M).group(1)
        key = "ConvNetPadded" if name == "ConvNet" and "padding=1" in block.code else name
        classes[key] = (ns[name], block.code)
    assert set(classes) == {"ConvNet", "ConvNetPadded", "AutoEncoder"}, f"class blocks found: {sorted(classes)}"
    return classes


@pytest.fixture
def fashion_files(tmp_path, monkeypatch):
    """Small IDX files in Fashion-MNIST's format (54 train, 6 val, 20 test), used for `fashion-mnist` by
    `data.build` in place of the real files."""
    write_idx_dataset(tmp_path, n_train=60, n_test=20)
    real_build = powertrain.data.build

    def build(section: dict, seed: int = 0):
        assert section["name"] == "fashion-mnist"
        return real_build({**section, "path": str(tmp_path)}, seed)

    monkeypatch.setattr(powertrain.data, "build", build)
    return tmp_path


def raised_line(err: BaseException) -> str:
    """The last line of a traceback: `module.Class: message`, builtins without the module."""
    cls = type(err)
    name = cls.__qualname__ if cls.__module__ == "builtins" else f"{cls.__module__}.{cls.__qualname__}"
    return f"{name}: {err}"


def test_the_page_runs_as_written_and_shows_the_errors_users_get(fashion_files):
    ns: dict = {"__name__": "examples"}
    blocks = python_blocks(DOC)
    assert len([b for b in blocks if b.error]) == 2  # the Trainer's ShapeError and the plain loop's late ValueError
    for block in blocks:
        if block.error is None:
            exec(block.compiled(DOC), ns)
            continue
        with pytest.raises(Exception) as info:
            exec(block.compiled(DOC), ns)
        assert raised_line(info.value) == block.error, f"docs/examples.md line {block.line}"
    assert ns["trainer"].step > 0 and isinstance(ns["encoder"], ns["AutoEncoder"])


def test_the_classes_are_the_documents_text_and_the_fix_changes_only_the_padding():
    classes = documents_classes()
    seed = sorted(SEEDS.glob("001_*.txt"))
    if seed:  # shared/ beside the checkout: the page's blocks are the document's, character for character
        doc_blocks = [b.code for b in python_blocks(seed[0])]
        assert classes["ConvNet"][1] in doc_blocks and classes["AutoEncoder"][1] in doc_blocks
    as_written = classes["ConvNet"][1]
    class_text = as_written[as_written.index("class ConvNet"):as_written.index("\nnet = ConvNet()")].rstrip() + "\n"
    fixed = (class_text.replace("nn.Conv2d(1, 32, 3, 1)", "nn.Conv2d(1, 32, 3, 1, padding=1)")
             .replace("nn.Conv2d(32, 64, 3, 1)", "nn.Conv2d(32, 64, 3, 1, padding=1)"))
    assert fixed != class_text and classes["ConvNetPadded"][1] == fixed


def bundle_of(n: int) -> DataBundle:
    x, y = torch.randn(n, 1, 28, 28), torch.arange(n) % 10
    return DataBundle.from_tensors((x, y), num_classes=10)


@pytest.mark.parametrize("n_train", [1, 2, 49, 64, 98])
def test_the_convnet_as_written_stops_at_trainer_construction(n_train):
    ConvNet = documents_classes()["ConvNet"][0]
    with pytest.raises(ShapeError, match=r"^ConvNet: layer 'fc1' expects in_features=3136, but after layer 'conv2' "
                                         r"the data has 1600 values per sample \(shape '\[-1, 3136\]' is invalid"):
        Trainer(ConvNet(), bundle_of(n_train), TrainConfig(batch_size=49), callbacks=[])


@pytest.mark.parametrize("batch,rows", [(49, 25), (98, 50)])
def test_a_probe_of_a_multiple_of_49_samples_is_caught_too(batch, rows):
    """There `view` succeeds and mixes samples into rows; the dry run still names fc1 and both sizes."""
    ConvNet = documents_classes()["ConvNet"][0]
    with pytest.raises(ShapeError, match=rf"a batch of {batch} samples came out as {rows} rows first at layer 'fc1', "
                                         rf"which got \({rows}, 3136\): 1600 values per sample, but it expects "
                                         r"in_features=3136; a reshape \(view\) mixes samples"):
        dry_run(ConvNet(), torch.randn(batch, 1, 28, 28))


class Losses(Callback):
    def __init__(self):
        self.values: list[float] = []

    def on_step_end(self, trainer, loss):
        self.values.append(loss)


def plain_loop(model, x, target, loss_fn, epochs: int, batch_size: int, seed: int) -> list[float]:
    """A textbook PyTorch loop: Adam(lr=1e-3), the Trainer's documented order (randperm seeded by seed, epoch)."""
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    losses = []
    for epoch in range(epochs):
        order = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed * 1_000_003 + epoch))
        for i in range(0, len(x), batch_size):
            idx = order[i:i + batch_size]
            opt.zero_grad()
            loss = loss_fn(model(x[idx]), target[idx])
            loss.backward()
            opt.step()
            losses.append(loss.item())
    return losses


def same_training(make_model, bundle: DataBundle, loss_fn, epochs: int = 3, batch_size: int = 16, seed: int = 1):
    """Train `make_model()` by the Trainer and by the plain loop; both must give the same losses and weights,
    and the Trainer's train loss must fall."""
    rec = Losses()
    torch.manual_seed(0)
    trainer = Trainer(make_model(), bundle, TrainConfig(epochs=epochs, batch_size=batch_size, device="cpu"),
                      callbacks=[rec], seed=seed, meter=False)
    before = trainer.evaluate("train")["loss"]
    trainer.fit()
    torch.manual_seed(0)
    ref = make_model()
    x, target = bundle.train.tensors[:2]
    assert rec.values == plain_loop(ref, x, target, loss_fn, epochs, batch_size, seed)  # bit for bit
    for a, b in zip(trainer.model.state_dict().values(), ref.state_dict().values()):
        assert torch.equal(a, b)
    assert trainer.evaluate("train")["loss"] < before


def test_the_padded_convnet_trains_like_a_plain_loop(fashion_files):
    ConvNet = documents_classes()["ConvNetPadded"][0]
    bundle = data.build({"name": "fashion-mnist"}, seed=0)  # images, standardised per batch from uint8
    same_training(ConvNet, bundle, F.cross_entropy)


def test_the_autoencoder_trains_on_flat_images_like_a_plain_loop(fashion_files):
    AutoEncoder = documents_classes()["AutoEncoder"][0]
    pixels = data.build({"name": "fashion-mnist", "normalize": False}, seed=0)
    x = pixels.train.tensors[0].flatten(1)
    flat = DataBundle.from_tensors((x, x), task="reconstruction")
    same_training(lambda: AutoEncoder(784, 128, 784), flat, F.mse_loss)


def test_a_plain_loop_over_split_tensors_runs_the_documents_convnet(fashion_files):
    ConvNet = documents_classes()["ConvNetPadded"][0]
    x, y = data.build({"name": "fashion-mnist"}, seed=0).train.tensors
    assert x.stride() == (784, 784, 28, 1)  # plain NCHW: numpy's images[:, None] had left stride 0 on C
    assert F.cross_entropy(ConvNet()(x[:8]), y[:8]).isfinite()
