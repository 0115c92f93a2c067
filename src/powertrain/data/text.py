"""Text: `text`, a character- or byte-level corpus for language models, and `text-classification`,
labelled texts from CSV or JSONL as padded token sequences.

`text` reads a file, or every file of a directory in sorted order (default: the .py files of the
Python standard library, site-packages excluded). The tail `val_fraction` of the token stream is
the val split (and, with `test_fraction`, the very end is test). A sample is a window of
`block_size` tokens: x = tokens[s : s+T], y = tokens[s+1 : s+T+1].

>>> from powertrain import data
>>> b = data.build({"name": "text", "max_chars": 20000, "block_size": 64}, seed=0)
>>> b.meta.task, b.meta.input_shape
('language_model', (64,))
>>> vocab = b.meta.vocab
>>> vocab.decode(vocab.encode("def f():"))
'def f():'
"""
from __future__ import annotations

import csv
import json
import sysconfig
from dataclasses import dataclass
from fnmatch import fnmatch
from pathlib import Path
from typing import Iterator, Literal, Optional, Sequence

import numpy as np
import torch
from pydantic import Field

from ..errors import DataError
from .bundle import DataBundle, DataMeta, DataOptions, LoaderSplit, TensorSplit, holdout
from .registry import DATASETS

Level = Literal["char", "byte"]


# ---------------------------------------------------------------- vocabulary: encode / decode
@dataclass
class Vocab:
    """Token ids <-> text. Byte level: ids 0..255 are the bytes. Char level: `itos[i]` is the character of
    id i. `offset` reserves the first ids for special tokens (text-classification: 0 = padding, 1 = unknown)."""

    level: Level
    itos: Optional[list[str]] = None  # char level only
    offset: int = 0  # ids below this are special tokens
    unknown: Optional[int] = None  # id for characters outside the vocabulary (None: they are an error)

    def __post_init__(self):
        self.stoi = {c: i + self.offset for i, c in enumerate(self.itos or [])}

    @property
    def size(self) -> int:
        return self.offset + (256 if self.level == "byte" else len(self.itos))

    def encode(self, text: str) -> torch.Tensor:
        """`text` -> 1-D int64 ids."""
        if self.level == "byte":
            return torch.tensor(list(text.encode("utf-8")), dtype=torch.long) + self.offset
        ids = []
        for c in text:
            i = self.stoi.get(c, self.unknown)
            if i is None:
                raise DataError(f"character {c!r} is not in this corpus' vocabulary of {len(self.itos)} characters; "
                                f"leave it out of the prompt (or train on level: byte)")
            ids.append(i)
        return torch.tensor(ids, dtype=torch.long)

    def decode(self, ids: Sequence[int] | torch.Tensor) -> str:
        """ids -> text (special tokens dropped; invalid UTF-8 at byte level shown as U+FFFD)."""
        ids = [int(i) - self.offset for i in (ids.tolist() if isinstance(ids, torch.Tensor) else ids)]
        ids = [i for i in ids if i >= 0]
        if self.level == "byte":
            return bytes(i for i in ids if i < 256).decode("utf-8", errors="replace")
        return "".join(self.itos[i] for i in ids if i < len(self.itos))

    def to_dict(self) -> dict:
        """JSON-ready form (for a run directory); `Vocab(**d)` rebuilds it."""
        return {"level": self.level, "itos": self.itos, "offset": self.offset, "unknown": self.unknown}


def char_ids(text: str) -> tuple[np.ndarray, list[str]]:
    """Code points of `text` as ids into its sorted set of characters: (ids, itos). O(n), no Python loop."""
    cps = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)
    if cps.size == 0:
        return np.zeros(0, np.int32), []
    present = np.zeros(int(cps.max()) + 1, dtype=bool)
    present[cps] = True
    chars = np.flatnonzero(present)
    lut = np.zeros(len(present), dtype=np.int32)
    lut[chars] = np.arange(len(chars))
    return lut[cps], [chr(c) for c in chars]


def _small_int(ids: np.ndarray, vocab_size: int) -> torch.Tensor:
    dtype = np.uint8 if vocab_size <= 256 else np.int16 if vocab_size <= 32767 else np.int32
    return torch.from_numpy(ids.astype(dtype))


# ---------------------------------------------------------------- the language-model split
class WindowSplit:
    """Windows of `block_size` tokens over a 1-D token stream, as a split the trainer can batch.

    Sample k starts at `offset + k * stride`. Training splits (`shuffle_offset`) draw the offset per
    epoch in [0, stride) from the epoch's permutation (`order[0] % stride`): so it follows the seed and
    the epoch, a resumed run gets the same windows, and over epochs every position starts a window.
    Evaluation (order 0, 1, 2, ...) uses offset 0: fixed windows.
    """

    def __init__(self, tokens: torch.Tensor, block_size: int, stride: int, shuffle_offset: bool = False):
        self.tokens, self.block_size, self.stride, self.shuffle_offset = tokens, block_size, stride, shuffle_offset
        reach = block_size + 1 + (stride - 1 if shuffle_offset else 0)  # tokens the last window may need
        self._len = 0 if len(tokens) < reach else (len(tokens) - reach) // stride + 1
        self._arange = torch.arange(block_size + 1, device=tokens.device)

    def __len__(self) -> int:
        return self._len

    def to(self, device) -> "WindowSplit":
        return WindowSplit(self.tokens.to(device), self.block_size, self.stride, self.shuffle_offset)

    def batches(self, order: torch.Tensor, batch_size: int, start: int = 0) -> Iterator[tuple]:
        offset = int(order[0]) % self.stride if self.shuffle_offset and len(order) else 0
        order = order.to(self.tokens.device)
        for i in range(start * batch_size, len(order), batch_size):
            starts = order[i : i + batch_size] * self.stride + offset
            chunk = self.tokens[starts[:, None] + self._arange].long()  # (B, T+1)
            yield chunk[:, :-1], chunk[:, 1:]


# ---------------------------------------------------------------- reading a corpus
def stdlib_dir() -> Path:
    return Path(sysconfig.get_paths()["stdlib"])


class TextOptions(DataOptions):
    path: Optional[str] = None  # a file or directory (default: the Python standard library)
    glob: Optional[str] = None  # files of a directory to read (default: "**/*.py" for the stdlib, else "**/*")
    exclude: list[str] = Field(default_factory=lambda: ["site-packages", "dist-packages"])  # skip paths with a part matching one of these
    level: Level = "char"
    max_chars: Optional[int] = Field(None, ge=2)  # cap the corpus at this many tokens (chars, or bytes), read in order
    block_size: int = Field(256, ge=1)  # T: tokens per sample
    stride: Optional[int] = Field(None, ge=1)  # distance between training windows (default block_size: no overlap)
    val_fraction: float = Field(0.1, ge=0, lt=1)  # the tail of the corpus
    test_fraction: float = Field(0.0, ge=0, lt=1)  # the very end of the corpus (0: no test split)


def corpus_files(opts: TextOptions) -> tuple[Path, list[Path]]:
    root = Path(opts.path).expanduser() if opts.path else stdlib_dir()
    if root.is_file():
        return root, [root]
    if not root.is_dir():
        raise DataError(f"text: {root} does not exist; set data.path to a text file or a directory of text files")
    pattern = opts.glob or ("**/*.py" if opts.path is None else "**/*")

    def wanted(f: Path) -> bool:
        parts = f.relative_to(root).parts
        return (f.is_file() and not any(p.startswith(".") or p == "__pycache__" for p in parts)
                and not any(fnmatch(p, ex) for p in parts for ex in opts.exclude))

    files = sorted((f for f in root.glob(pattern) if wanted(f)), key=lambda f: f.relative_to(root).as_posix())
    if not files:
        raise DataError(f"text: no files matching '{pattern}' in {root}; set data.glob (e.g. '**/*.txt') or data.path")
    return root, files


def read_corpus(opts: TextOptions) -> tuple[str | bytes, dict]:
    """The concatenated corpus (str for char level, bytes for byte level), capped at `max_chars`."""
    root, files = corpus_files(opts)
    parts, total, skipped, used = [], 0, [], 0
    for f in files:
        if opts.max_chars is not None and total >= opts.max_chars:
            break
        raw = f.read_bytes()
        if opts.level == "char":
            try:
                piece = raw.decode("utf-8")
            except UnicodeDecodeError:
                skipped.append(str(f))
                continue
        else:
            piece = raw
        if opts.max_chars is not None:
            piece = piece[: opts.max_chars - total]
        parts.append(piece)
        total += len(piece)
        used += 1
    if total == 0:
        why = f"{len(skipped)} not UTF-8 (use level: byte)" if skipped else "all empty"
        raise DataError(f"text: no text read from {root} ({len(files)} files, {why}); point data.path at text files")
    corpus = "".join(parts) if opts.level == "char" else b"".join(parts)
    return corpus, {"source": str(root), "files": used, "skipped_files": skipped}


@DATASETS.register("text", TextOptions)
def text_corpus(opts: TextOptions, seed: int) -> DataBundle:
    """A character- or byte-level corpus (default: the Python stdlib's .py files) as next-token windows."""
    corpus, info = read_corpus(opts)
    if opts.level == "byte":
        ids, vocab = np.frombuffer(corpus, dtype=np.uint8), Vocab("byte")
    else:
        ids, itos = char_ids(corpus)
        vocab = Vocab("char", itos)
    tokens = _small_int(ids, vocab.size)
    n, T = len(tokens), opts.block_size
    n_test = int(n * opts.test_fraction)
    n_val = int(n * opts.val_fraction)
    n_train = n - n_val - n_test
    stride = opts.stride or T
    train = WindowSplit(tokens[:n_train], T, stride, shuffle_offset=True)
    if len(train) == 0:
        raise DataError(f"text: the train part has {n_train} tokens, too few for one window of block_size {T} "
                        f"(+ stride {stride}); lower data.block_size or read more text (data.max_chars, data.path)")

    def tail(lo: int, hi: int, what: str):
        if hi == lo:
            return None
        split = WindowSplit(tokens[lo:hi], T, T)
        if len(split) == 0:
            raise DataError(f"text: the {what} part has {hi - lo} tokens, fewer than block_size + 1 = {T + 1}; "
                            f"raise data.{what}_fraction or lower data.block_size")
        return split

    val, test = tail(n_train, n_train + n_val, "val"), tail(n_train + n_val, n, "test")
    extra = {"level": opts.level, "block_size": T, "tokens": {"train": n_train, "val": n_val, "test": n_test}, **info}
    meta = DataMeta((T,), "language_model", None, None, extra, vocab=vocab, vocab_size=vocab.size, input_dtype=torch.long)
    return DataBundle(train, val, test, meta)


# ---------------------------------------------------------------- text classification
class TextClassificationOptions(DataOptions):
    path: str  # .csv (header row) or .jsonl / .json (one JSON object per line)
    test_path: Optional[str] = None  # a separate test file in the same format (else test_fraction of path)
    text_field: str = "text"
    label_field: str = "label"
    level: Level = "char"
    max_len: int = Field(256, ge=1)  # tokens per sample: longer texts are cut, shorter ones padded with id 0
    lowercase: bool = False
    test_fraction: float = Field(0.2, gt=0, lt=1)
    normalize: bool = False  # (not used: token ids are not standardised)


def read_labelled(path: Path, text_field: str, label_field: str) -> tuple[list[str], list[str]]:
    """(texts, labels as strings) from a CSV with a header or a JSONL file."""
    if not path.is_file():
        raise DataError(f"text-classification: {path} does not exist; set data.path to a .csv or .jsonl file "
                        f"with fields '{text_field}' and '{label_field}'")
    texts, labels = [], []
    try:
        with path.open(encoding="utf-8-sig", newline="") as f:
            if path.suffix.lower() in (".jsonl", ".json", ".ndjson"):
                for line_no, line in enumerate(f, 1):
                    if not line.strip():
                        continue
                    try:
                        obj = json.loads(line)
                    except json.JSONDecodeError as err:
                        raise DataError(f"{path}:{line_no}: not valid JSON ({err.msg}); expected one object per "
                                        f"line like {{\"{text_field}\": \"...\", \"{label_field}\": \"...\"}}") from None
                    if not isinstance(obj, dict) or text_field not in obj or label_field not in obj:
                        have = ", ".join(obj) if isinstance(obj, dict) else type(obj).__name__
                        raise DataError(f"{path}:{line_no}: expected fields '{text_field}' and '{label_field}', found "
                                        f"{have or 'none'}; set data.text_field / data.label_field")
                    if obj[label_field] is None or obj[text_field] is None:
                        raise DataError(f"{path}:{line_no}: '{text_field}' or '{label_field}' is null; "
                                        f"remove the line or fill it in")
                    texts.append(str(obj[text_field]))
                    labels.append(str(obj[label_field]))
            elif path.suffix.lower() in (".csv", ".tsv"):
                reader = csv.DictReader(f, delimiter="\t" if path.suffix.lower() == ".tsv" else ",")
                fields = reader.fieldnames or []
                for need in (text_field, label_field):
                    if need not in fields:
                        raise DataError(f"{path}: no column '{need}' (data.{'text' if need == text_field else 'label'}"
                                        f"_field); the columns are: {', '.join(fields) or 'none'}")
                for row in reader:
                    if row[text_field] is None or row[label_field] is None:
                        raise DataError(f"{path}:{reader.line_num}: fewer fields than the header; fix the row "
                                        f"(quote texts that hold commas)")
                    texts.append(row[text_field])
                    labels.append(row[label_field].strip())
            else:
                raise DataError(f"text-classification: {path} is neither .csv/.tsv nor .jsonl/.json; "
                                f"rename it or convert it to one of those")
    except UnicodeDecodeError as err:
        raise DataError(f"{path}: not UTF-8 text ({err.reason} at byte {err.start}); save the file as UTF-8") from None
    if not texts:
        raise DataError(f"{path}: no samples; expected one line per text with its label")
    return texts, labels


def _label_order(labels: list[str]) -> list[str]:
    """Distinct labels, numerically sorted if they are all integers, else alphabetically."""
    uniq = set(labels)
    try:
        return sorted(uniq, key=int)
    except ValueError:
        return sorted(uniq)


def encode_padded(texts: list[str], vocab: Vocab, max_len: int) -> torch.Tensor:
    """(N, max_len) int64 ids, cut at max_len, padded with 0 on the right."""
    out = torch.zeros(len(texts), max_len, dtype=torch.long)
    for i, t in enumerate(texts):
        ids = vocab.encode(t[:max_len])[:max_len]  # max_len chars give at least max_len bytes
        out[i, : len(ids)] = ids
    return out


@DATASETS.register("text-classification", TextClassificationOptions)
def text_classification(opts: TextClassificationOptions, seed: int) -> DataBundle:
    """Labelled texts (CSV or JSONL) as (max_len,) token ids, char or byte level, with labels as classes."""
    texts, labels = read_labelled(Path(opts.path).expanduser(), opts.text_field, opts.label_field)
    if opts.test_path:
        test_texts, test_labels = read_labelled(Path(opts.test_path).expanduser(), opts.text_field, opts.label_field)
    if opts.lowercase:
        texts = [t.lower() for t in texts]
        test_texts = [t.lower() for t in test_texts] if opts.test_path else None
    names = _label_order(labels)
    index = {n: i for i, n in enumerate(names)}
    y = np.array([index[v] for v in labels], dtype=np.int64)
    idx = np.arange(len(texts))
    strat = np.bincount(y).min() >= 2
    if opts.test_path:
        unknown = sorted(set(test_labels) - set(names))
        if unknown:
            raise DataError(f"{opts.test_path}: label '{unknown[0]}' does not occur in {opts.path}; "
                            f"the train file must hold every class")
        rest, test = (idx, y), None
    else:
        rest, test = holdout(idx, y, opts.test_fraction, seed, stratify=strat)
    strat = strat and np.bincount(rest[1], minlength=len(names)).min() >= 2
    (tr, _), val = holdout(rest[0], rest[1], opts.val_fraction, seed, stratify=strat)
    tr = np.sort(tr)

    if opts.level == "byte":
        vocab = Vocab("byte", offset=1)  # 0 = padding, byte b = b + 1
    else:  # characters of the train split; others map to 1 (unknown)
        chars = sorted(set().union(*(set(texts[i]) for i in tr)))
        vocab = Vocab("char", chars, offset=2, unknown=1)

    def split(ts: list[str], ys: np.ndarray):
        tensors = (encode_padded(ts, vocab, opts.max_len), torch.from_numpy(ys))
        return TensorSplit(*tensors) if opts.in_memory else LoaderSplit(torch.utils.data.TensorDataset(*tensors),
                                                                         opts.num_workers)

    pick = lambda ii: split([texts[i] for i in ii], y[ii])  # noqa: E731
    train_split = pick(tr)
    val_split = None if val is None else pick(np.sort(val[0]))
    if opts.test_path:
        test_split = split(test_texts, np.array([index[v] for v in test_labels], dtype=np.int64))
    else:
        test_split = pick(np.sort(test[0]))
    meta = DataMeta((opts.max_len,), "multiclass", len(names), names, {"level": opts.level, "max_len": opts.max_len},
                    vocab=vocab, vocab_size=vocab.size, input_dtype=torch.long, pad_id=0)
    return DataBundle(train_split, val_split, test_split, meta)
