"""`csv`: a table from a CSV file with a target column, cleaned as the options say, with a report.

Cleaning runs in this order, and the report (`meta.extra["report"]`, printable) counts each step:

1. drop `drop_columns`; 2. drop rows whose target is missing; 3. drop exact duplicate rows
(`drop_duplicates`); 4. missing feature values: drop those rows (`missing: drop`) or fill them in
(`mean`, `median`, `most_frequent`; categorical columns always take the most frequent value);
5. split into train/val/test by seed; 6. one-hot encode categorical columns; 7. standardise numeric
columns (`normalize`). Everything learnt from data (fill values, categories, mean and std) comes
from the train split only, so nothing leaks from val or test.

>>> from powertrain import data
>>> bundle = data.build({"name": "csv", "path": "patients.csv", "target": "diagnosis"}, seed=0)  # doctest: +SKIP
>>> print(bundle.meta.extra["report"])  # doctest: +SKIP
"""
from __future__ import annotations

import csv
import math
from collections import Counter
from pathlib import Path
from typing import Literal, Optional

import numpy as np
from pydantic import Field

from ..errors import DataError, closest
from .bundle import DataMeta, DataOptions, holdout, make_bundle
from .registry import DATASETS

MISSING = ["", "NA", "N/A", "NaN", "nan", "null", "NULL", "None", "?"]
INFINITE = {"inf", "infinity"}  # with any sign and case: counted as missing too


class CsvOptions(DataOptions):
    path: str  # the CSV file; the first row names the columns
    target: str = "target"  # the column to predict
    task: Literal["auto", "multiclass", "binary", "regression"] = "auto"  # auto: see docs/data.md
    delimiter: str = Field(",", min_length=1, max_length=1)
    missing: Literal["drop", "mean", "median", "most_frequent"] = "drop"  # rows with a missing feature value
    na_values: list[str] = Field(default_factory=lambda: list(MISSING))  # cells that count as missing
    drop_duplicates: bool = True  # drop rows identical to an earlier row (all columns, target included)
    drop_columns: list[str] = Field(default_factory=list)  # e.g. ids
    categorical: list[str] = Field(default_factory=list)  # treat these as categorical even if numeric
    one_hot: bool = True  # categorical columns as one 0/1 column per category, else as the category's index
    max_categories: int = Field(100, ge=2)  # more distinct values than this in a categorical column is an error
    test_fraction: float = Field(0.2, gt=0, lt=1)  # held out as the test split


class CleaningReport(dict):
    """What cleaning did, as a plain (JSON-ready) dict; `print(report)` shows it as text."""

    def __str__(self) -> str:
        lines = [f"csv {self['file']}: {self['rows_read']} rows read, {self['rows_kept']} kept"]
        for reason, n in self["dropped"].items():
            if n:
                lines.append(f"  dropped {n} rows: {reason}")
        if self.get("beyond_float32"):
            lines.append("  numbers beyond float32 (|x| > 3.4e38), counted as missing: "
                         + ", ".join(f"{k} {v}" for k, v in self["beyond_float32"].items()))
        if self["missing_cells"]:
            lines.append("  missing values by column: " + ", ".join(f"{k} {v}" for k, v in self["missing_cells"].items()))
        for col, how in self["imputed"].items():
            lines.append(f"  filled {how['count']} missing in {col} with {how['strategy']} {how['value']!r}")
        if self["unseen_categories"]:
            lines.append("  categories not in train (encoded as none): "
                         + ", ".join(f"{k} {v}" for k, v in self["unseen_categories"].items()))
        c = self["columns"]
        lines.append(f"  columns: {len(c['numeric'])} numeric, {len(c['categorical'])} categorical"
                     + (f" ({', '.join(c['categorical'])})" if c["categorical"] else "")
                     + (f", dropped {', '.join(c['dropped'])}" if c["dropped"] else "")
                     + f" -> {self['features']} features")
        lines.append(f"  target {self['target']}: {self['task']}"
                     + (f", {len(self['classes'])} classes" if self.get("classes") else ""))
        lines.append("  splits: " + ", ".join(f"{k} {v}" for k, v in self["splits"].items()))
        return "\n".join(lines)


FLOAT32_MAX = float(np.finfo(np.float32).max)  # a model's inputs are float32: a larger number becomes inf


def beyond_float32(cell: str) -> bool:
    """A number that float32 cannot hold (|x| > 3.4e38, e.g. 1e308): as a model input it would be inf."""
    try:
        v = float(cell)
    except ValueError:
        return False
    return math.isfinite(v) and abs(v) > FLOAT32_MAX


def read_csv(path: Path, delimiter: str, na_values: set[str], overflow: Optional[Counter] = None
             ) -> tuple[list[str], list[list[Optional[str]]]]:
    """Header and rows of stripped cells, `None` where missing: a missing-value marker, an infinity, or a number
    beyond float32 (counted by column in `overflow`); a row of the wrong width is an error."""
    if not path.is_file():
        raise DataError(f"csv: {path} does not exist; set data.path to a CSV file whose first row names the columns")
    rows: list[list[Optional[str]]] = []
    try:
        with path.open(newline="", encoding="utf-8-sig") as f:
            reader = csv.reader(f, delimiter=delimiter)
            header = [h.strip() for h in next(reader, [])]
            if not header or not any(header):
                raise DataError(f"{path}: empty file; expected a header row naming the columns, then one row per sample")
            dupes = [h for h, n in Counter(header).items() if n > 1]
            if dupes:
                raise DataError(f"{path}: column name '{dupes[0]}' appears twice in the header; rename one")
            for row in reader:
                if not row or (len(row) == 1 and not row[0].strip()):
                    continue  # blank line
                if len(row) != len(header):
                    raise DataError(f"{path}:{reader.line_num}: {len(row)} fields, but the header has {len(header)}; "
                                    f"fix the row (quote fields holding '{delimiter}') or set data.delimiter")
                cells = [c.strip() for c in row]
                for j, c in enumerate(cells):
                    if c and c[-1:].isdigit() and beyond_float32(c):
                        cells[j] = None
                        if overflow is not None:
                            overflow[header[j]] += 1
                rows.append([None if c is None or c in na_values or c.lower().lstrip("+-") in INFINITE else c
                             for c in cells])
    except UnicodeDecodeError as err:
        raise DataError(f"{path}: not UTF-8 text ({err.reason} at byte {err.start}); save the file as UTF-8") from None
    except csv.Error as err:
        raise DataError(f"{path}: not readable as CSV ({err}); check data.delimiter and quoting") from None
    return header, rows


def _number(s: str) -> Optional[float]:
    try:
        v = float(s)
    except ValueError:
        return None
    return v if math.isfinite(v) else None


def _fill_value(values: list, strategy: str, numeric: bool):
    """The train split's fill value of a column (values without missing)."""
    if not values:
        return 0.0 if numeric else ""
    if numeric and strategy == "mean":
        return float(np.mean(values))
    if numeric and strategy == "median":
        return float(np.median(values))
    counts = Counter(values)
    top = max(counts.values())
    return min(v for v, n in counts.items() if n == top)  # ties: the smallest, so the result is deterministic


@DATASETS.register("csv", CsvOptions)
def csv_table(opts: CsvOptions, seed: int):
    """A CSV table with a target column: cleaned (missing, duplicates, one-hot, standardise), with a report."""
    path = Path(opts.path).expanduser()
    overflow: Counter = Counter()
    header, rows = read_csv(path, opts.delimiter, set(opts.na_values), overflow)
    for col in [opts.target, *opts.drop_columns, *opts.categorical]:
        if col not in header:
            field = "target" if col == opts.target else ("drop_columns" if col in opts.drop_columns else "categorical")
            raise DataError(f"{path}: no column '{col}' (data.{field}){closest(col, header)}; "
                            f"the columns are: {', '.join(header)}")
    report = CleaningReport(file=str(path), rows_read=len(rows), rows_kept=0, dropped={}, missing_cells={},
                            imputed={}, unseen_categories={}, target=opts.target,
                            beyond_float32={k: v for k, v in overflow.items() if k not in opts.drop_columns})
    keep_cols = [i for i, h in enumerate(header) if h not in opts.drop_columns]
    header = [header[i] for i in keep_cols]
    rows = [[r[i] for i in keep_cols] for r in rows]
    t = header.index(opts.target)

    kept = [r for r in rows if r[t] is not None]
    report["dropped"]["missing target"] = len(rows) - len(kept)
    rows = kept
    if opts.drop_duplicates:
        seen, kept = set(), []
        for r in rows:
            key = tuple(r)
            if key not in seen:
                seen.add(key)
                kept.append(r)
        report["dropped"]["duplicate"] = len(rows) - len(kept)
        rows = kept
    features = [i for i in range(len(header)) if i != t]
    missing = {header[j]: sum(r[j] is None for r in rows) for j in features}
    report["missing_cells"] = {k: v for k, v in missing.items() if v}
    if opts.missing == "drop":
        kept = [r for r in rows if all(r[j] is not None for j in features)]
        report["dropped"]["missing feature value"] = len(rows) - len(kept)
        rows = kept
    if not rows:
        raise DataError(f"{path}: no rows left after cleaning ({', '.join(f'{v} {k}' for k, v in report['dropped'].items())}); "
                        f"fill values in (data.missing: mean|median|most_frequent) or check data.na_values")
    report["rows_kept"] = len(rows)

    # ---- column types: numeric where every present value is a finite number
    numeric = {}
    for j in features:
        nums = [_number(r[j]) for r in rows if r[j] is not None]
        numeric[j] = header[j] not in opts.categorical and all(v is not None for v in nums)
    report["columns"] = {"numeric": [header[j] for j in features if numeric[j]],
                         "categorical": [header[j] for j in features if not numeric[j]],
                         "dropped": list(opts.drop_columns)}

    # ---- target
    y_raw = [r[t] for r in rows]
    y_num = [_number(v) for v in y_raw]
    is_num = all(v is not None for v in y_num)
    task = opts.task
    if task == "auto":
        integral = is_num and all(float(v).is_integer() for v in y_num)
        task = "multiclass" if (not is_num or (integral and len(set(y_num)) <= 50)) else "regression"
    class_names = None
    if task == "regression":
        if not is_num:
            bad = next(v for v, n in zip(y_raw, y_num) if n is None)
            raise DataError(f"{path}: target '{opts.target}' holds '{bad}', not a number, but data.task is regression; "
                            f"set data.task: multiclass or fix the value")
        y = np.array(y_num, dtype=np.float32)
    else:
        if is_num and all(float(v).is_integer() for v in y_num):
            uniq = sorted(set(int(v) for v in y_num))
            class_names, keys = [str(v) for v in uniq], [int(v) for v in y_num]
            lookup = {v: i for i, v in enumerate(uniq)}
        else:
            class_names = sorted(set(y_raw))
            keys, lookup = y_raw, {v: i for i, v in enumerate(class_names)}
        if task == "binary" and len(class_names) != 2:
            raise DataError(f"{path}: target '{opts.target}' has {len(class_names)} classes, data.task binary needs 2; "
                            f"use data.task: multiclass")
        if len(class_names) < 2:
            raise DataError(f"{path}: target '{opts.target}' has a single class ({class_names[0]}); nothing to learn")
        y = np.array([lookup[k] for k in keys], dtype=np.int64)
        report["classes"] = class_names
    report["task"] = task

    # ---- split (indices), then learn everything from the train rows only
    idx = np.arange(len(rows))
    strat = task != "regression" and np.bincount(y).min() >= 2
    (rest, y_rest), test = holdout(idx, y, opts.test_fraction, seed, stratify=strat)
    strat = strat and np.bincount(y_rest, minlength=len(class_names or [])).min() >= 2
    (tr, _), val = holdout(rest, y_rest, opts.val_fraction, seed, stratify=strat)
    splits = {"train": np.sort(tr), "val": None if val is None else np.sort(val[0]), "test": np.sort(test[0])}

    columns, names, is_numeric_out = [], [], []
    for j in features:
        name = header[j]
        train_vals = [rows[i][j] for i in splits["train"] if rows[i][j] is not None]
        if numeric[j]:
            train_vals = [float(v) for v in train_vals]
        fill = None
        if opts.missing != "drop" and missing[name]:
            strategy = opts.missing if numeric[j] else "most_frequent"
            fill = _fill_value(train_vals, strategy, numeric[j])
            report["imputed"][name] = {"strategy": strategy, "value": fill, "count": missing[name]}
        cells = [rows[i][j] for i in range(len(rows))]
        if numeric[j]:
            columns.append(np.array([fill if c is None else float(c) for c in cells], dtype=np.float64)[:, None])
            names.append(name)
            is_numeric_out.append(True)
            continue
        cats = sorted(set(train_vals))
        if len(cats) > opts.max_categories:
            raise DataError(f"{path}: column '{name}' has {len(cats)} distinct non-numeric values (data.max_categories "
                            f"is {opts.max_categories}); add it to data.drop_columns if it is an id or free text")
        index = {c: k for k, c in enumerate(cats)}
        codes = np.array([index.get(fill if c is None else c, -1) for c in cells], dtype=np.int64)
        unseen = int((codes < 0).sum())
        if unseen:
            report["unseen_categories"][name] = unseen
        if opts.one_hot:
            onehot = np.zeros((len(rows), len(cats)), dtype=np.float64)
            onehot[np.flatnonzero(codes >= 0), codes[codes >= 0]] = 1.0
            columns.append(onehot)
            names += [f"{name}={c}" for c in cats]
            is_numeric_out += [False] * len(cats)
        else:
            columns.append(codes[:, None].astype(np.float64))
            names.append(name)
            is_numeric_out.append(True)  # an index is standardised like a number
    x = np.concatenate(columns, axis=1) if columns else np.zeros((len(rows), 0))
    if x.shape[1] == 0:
        raise DataError(f"{path}: no feature columns besides the target '{opts.target}'; add columns or fix data.drop_columns")

    mean, std = np.zeros(x.shape[1]), np.ones(x.shape[1])
    if opts.normalize:
        cols = np.array(is_numeric_out)
        xt = x[splits["train"]]
        mean[cols], std[cols] = xt[:, cols].mean(0), xt[:, cols].std(0)
        std[std == 0] = 1.0
        x = (x - mean) / std
    report["features"] = x.shape[1]
    report["splits"] = {k: (0 if v is None else len(v)) for k, v in splits.items()}
    x = x.astype(np.float32)
    pair = lambda s: None if s is None else (x[s], y[s])  # noqa: E731
    extra = {"report": report, "feature_names": names, "standardize": {"mean": mean.tolist(), "std": std.tolist()}}
    if task == "regression":
        pass  # one target column: DataMeta.targets' default
    meta = DataMeta((x.shape[1],), task, None if class_names is None else len(class_names), class_names, extra)
    return make_bundle(pair(splits["train"]), pair(splits["val"]), pair(splits["test"]), meta,
                       opts.model_copy(update={"normalize": False}))
