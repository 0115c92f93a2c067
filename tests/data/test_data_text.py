"""`text` (language-model windows over a corpus) and `text-classification` (CSV / JSONL)."""
import csv
import json

import pytest
import torch

from powertrain import TrainConfig, Trainer, data
from powertrain.data.text import Vocab, WindowSplit
from powertrain.errors import DataError


def corpus_dir(tmp_path):
    d = tmp_path / "corpus"
    (d / "sub").mkdir(parents=True)
    (d / "b.txt").write_text("second file: ünïcödé and more text\n" * 3)
    (d / "a.txt").write_text("first file, the quick brown fox jumps over the lazy dog\n" * 4)
    (d / "sub" / "c.txt").write_text("third, in a subfolder\n" * 5)
    (d / ".hidden").write_text("never read")
    return d, (d / "a.txt").read_text() + (d / "b.txt").read_text() + (d / "sub" / "c.txt").read_text()


def test_char_corpus_windows_round_trip(tmp_path):
    d, text = corpus_dir(tmp_path)
    b = data.build({"name": "text", "path": str(d), "block_size": 16, "val_fraction": 0.2}, seed=0)
    vocab = b.meta.vocab
    assert b.meta.task == "language_model" and b.meta.input_shape == (16,)
    assert b.meta.vocab_size == len(set(text)) == vocab.size and b.meta.input_dtype == torch.long
    assert b.meta.vocab.itos == sorted(set(text)) and b.meta.extra["files"] == 3
    n_train = len(text) - int(len(text) * 0.2)
    # val: non-overlapping windows over the tail, in order
    xv, yv = next(b.val.batches(torch.arange(len(b.val)), len(b.val)))
    assert xv.dtype == torch.long and xv.shape == (len(b.val), 16)
    assert vocab.decode(xv.flatten()) == text[n_train:n_train + 16 * len(b.val)]
    assert torch.equal(xv[:, 1:], yv[:, :-1])  # y is x shifted by one
    # train: window k starts at offset + 16 k, with the offset drawn from the epoch's permutation
    order = torch.randperm(len(b.train), generator=torch.Generator().manual_seed(3))
    offset = int(order[0]) % 16
    x, y = next(b.train.batches(order, 4))
    for k, xi, yi in zip(order[:4].tolist(), x, y):
        start = offset + 16 * k
        assert vocab.decode(xi) == text[start:start + 16] and vocab.decode(yi) == text[start + 1:start + 17]
        assert start + 17 <= n_train  # never reaches into val
    assert vocab.decode(vocab.encode("quick fox")) == "quick fox"


def test_window_split_offsets_cover_every_position_and_resume_the_same():
    tokens = torch.arange(100, dtype=torch.int16)
    split = WindowSplit(tokens, block_size=8, stride=8, shuffle_offset=True)
    assert len(split) == (100 - 8 - 1 - 7) // 8 + 1
    offsets = set()
    for epoch in range(40):
        order = torch.randperm(len(split), generator=torch.Generator().manual_seed(epoch))
        batches = list(split.batches(order, 3))
        resumed = list(split.batches(order, 3, start=2))
        assert all(torch.equal(a[0], b[0]) for a, b in zip(batches[2:], resumed))
        x = torch.cat([bx for bx, _ in batches])
        offsets.add(int(x[0, 0]) - 8 * int(order[0]))
        assert int(x.max()) < 100 and torch.equal(x[:, 1:] - x[:, :-1], torch.ones(len(x), 7, dtype=torch.long))
    assert offsets == set(range(8))


def test_byte_level_max_chars_and_single_file(tmp_path):
    d, text = corpus_dir(tmp_path)
    b = data.build({"name": "text", "path": str(d), "level": "byte", "block_size": 8, "max_chars": 300,
                    "val_fraction": 0.1, "test_fraction": 0.1}, seed=0)
    raw = text.encode()[:300]
    assert b.meta.vocab_size == 256 and b.meta.extra["tokens"] == {"train": 240, "val": 30, "test": 30}
    xt, _ = next(b.test.batches(torch.arange(len(b.test)), 100))
    assert bytes(xt.flatten().tolist()) == raw[270:270 + 8 * len(b.test)]
    one = data.build({"name": "text", "path": str(d / "a.txt"), "block_size": 4}, seed=0)
    assert one.meta.extra["files"] == 1 and one.meta.vocab.decode([0]) == "\n"


def test_default_corpus_is_the_stdlib_without_site_packages():
    b = data.build({"name": "text", "max_chars": 5000, "block_size": 32}, seed=0)
    assert b.meta.extra["source"] == data.text.stdlib_dir().as_posix()
    assert sum(b.meta.extra["tokens"].values()) == 5000
    x, _ = next(b.val.batches(torch.arange(2), 2))
    assert len(b.meta.vocab.decode(x[0])) == 32
    root, files = data.text.corpus_files(data.text.TextOptions())
    assert files and all(f.suffix == ".py" for f in files[:50])
    assert not any("site-packages" in f.parts or "dist-packages" in f.parts for f in files)


def test_trains_a_tiny_language_model_through_the_trainer(tmp_path):
    d, _ = corpus_dir(tmp_path)
    b = data.build({"name": "text", "path": str(d), "block_size": 8}, seed=0)
    V = b.meta.vocab_size
    model = torch.nn.Sequential(torch.nn.Embedding(V, 16), torch.nn.Linear(16, V))  # (B, T) -> (B, T, V)
    t = Trainer(model, b, TrainConfig(max_steps=20, batch_size=8, lr=0.05, device="cpu"), callbacks=[]).fit()
    assert t.evaluate("val")["loss"] < torch.log(torch.tensor(float(V))).item()


def test_text_errors(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        data.build({"name": "text", "path": str(tmp_path / "none")}, seed=0)
    (tmp_path / "tiny.txt").write_text("abc")
    with pytest.raises(DataError, match="too few for one window of block_size 8"):
        data.build({"name": "text", "path": str(tmp_path / "tiny.txt"), "block_size": 8}, seed=0)
    (tmp_path / "latin.txt").write_bytes("caf\xe9".encode("latin-1"))
    with pytest.raises(DataError, match="not UTF-8 .*level: byte"):
        data.build({"name": "text", "path": str(tmp_path / "latin.txt")}, seed=0)
    with pytest.raises(DataError, match="not in this corpus' vocabulary"):
        Vocab("char", ["a", "b"]).encode("abc")


# ------------------------------------------------------------------ text classification
def reviews(n=30):
    texts = [("good film, loved it " * (i % 4 + 1)) if i % 3 == 0 else ("bad plot " * (i % 5 + 1)) if i % 3 == 1
             else "okay ¯\\_(ツ)_/¯" for i in range(n)]
    return texts, [["pos", "neg", "meh"][i % 3] for i in range(n)]


@pytest.mark.parametrize("fmt", ["jsonl", "csv"])
def test_text_classification_round_trip(tmp_path, fmt):
    texts, labels = reviews()
    path = tmp_path / f"reviews.{fmt}"
    if fmt == "jsonl":
        path.write_text("".join(json.dumps({"review": t, "stars": l}) + "\n" for t, l in zip(texts, labels)))
    else:
        with path.open("w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["stars", "review"])
            w.writerows(zip(labels, texts))
    b = data.build({"name": "text-classification", "path": str(path), "text_field": "review", "label_field": "stars",
                    "max_len": 24, "val_fraction": 0.2}, seed=0)
    assert b.meta.class_names == ["meh", "neg", "pos"] and b.meta.input_shape == (24,)
    vocab = b.meta.vocab
    assert b.meta.pad_id == 0 and vocab.offset == 2 and vocab.unknown == 1
    for split in (b.train, b.val, b.test):
        x, y = next(split.batches(torch.arange(len(split)), len(split)))
        assert x.shape[1] == 24 and x.dtype == torch.long
        for xi, yi in zip(x, y):
            text = vocab.decode(xi)
            match = [i for i, t in enumerate(texts) if t[:24] == text]
            assert match and b.meta.class_names[yi] == labels[match[0]]
            assert (xi[len(text):] == 0).all()  # padding after the text
    assert sum(len(s) for s in (b.train, b.val, b.test)) == 30


def test_text_classification_byte_level_numeric_labels_and_test_file(tmp_path):
    rows = [{"text": "x" * (i + 1), "label": i % 3 * 10} for i in range(12)]
    (tmp_path / "train.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    (tmp_path / "test.jsonl").write_text(json.dumps({"text": "é", "label": 20}) + "\n")
    b = data.build({"name": "text-classification", "path": str(tmp_path / "train.jsonl"), "level": "byte",
                    "test_path": str(tmp_path / "test.jsonl"), "max_len": 4, "val_fraction": 0}, seed=0)
    assert b.meta.class_names == ["0", "10", "20"] and b.meta.vocab_size == 257
    x, y = next(b.test.batches(torch.arange(1), 1))
    assert x[0].tolist() == [0xC3 + 1, 0xA9 + 1, 0, 0] and y.tolist() == [2]


def test_text_classification_errors_name_file_and_line(tmp_path):
    p = tmp_path / "d.jsonl"
    p.write_text('{"text": "a", "label": 1}\n{"text": "b", "label": 0\n')
    with pytest.raises(DataError, match=r"d\.jsonl:2: not valid JSON"):
        data.build({"name": "text-classification", "path": str(p)}, seed=0)
    p.write_text('{"text": "a", "class": 1}\n')
    with pytest.raises(DataError, match=r"d\.jsonl:1: expected fields 'text' and 'label', found text, class"):
        data.build({"name": "text-classification", "path": str(p)}, seed=0)
    c = tmp_path / "d.csv"
    c.write_text("body,label\nhi,1\n")
    with pytest.raises(DataError, match=r"no column 'text' \(data.text_field\); the columns are: body, label"):
        data.build({"name": "text-classification", "path": str(c)}, seed=0)
