"""`csv`: cleaning (missing values, duplicates, one-hot, standardise), its report, and its errors."""
import csv

import numpy as np
import pytest
import torch

from powertrain import data
from powertrain.errors import DataError


def all_of(split):
    return next(split.batches(torch.arange(len(split)), len(split)))


def write_csv(path, header, rows):
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)
    return path


def messy(tmp_path, n=40):
    """id, a numeric size with gaps, a categorical colour with a gap, a string label; plus duplicates
    and rows without a label."""
    rng = np.random.default_rng(0)
    rows = []
    for i in range(n):
        size = "" if i % 7 == 3 else f"{rng.normal(10, 2):.3f}"
        colour = "NA" if i % 11 == 5 else ["red", "green", "blue"][i % 3]
        rows.append([i, size, colour, ["yes", "no"][i % 2]])
    rows += [rows[0], rows[1], rows[1]]  # 3 duplicates
    rows += [[100, "1.0", "red", ""], [101, "2.0", "blue", "?"]]  # 2 without a label
    rows[9][1] = "-inf"  # a non-finite number counts as missing (i = 9 has neither gap otherwise)
    return write_csv(tmp_path / "messy.csv", ["id", "size", "colour", "label"], rows), rows


def test_report_counts_each_reason(tmp_path):
    path, rows = messy(tmp_path)
    b = data.build({"name": "csv", "path": str(path), "target": "label"}, seed=0)
    r = b.meta.extra["report"]
    assert r["rows_read"] == 45
    assert r["dropped"] == {"missing target": 2, "duplicate": 3, "missing feature value": 7 + 4 - 1}
    assert r["rows_kept"] == 45 - 2 - 3 - 10 == len(b.train) + len(b.val) + len(b.test)
    assert r["missing_cells"] == {"size": 7, "colour": 4}
    assert r["columns"]["categorical"] == ["colour"] and r["columns"]["numeric"] == ["id", "size"]
    assert b.meta.class_names == ["no", "yes"] and b.meta.task == "multiclass"
    assert b.meta.extra["feature_names"] == ["id", "size", "colour=blue", "colour=green", "colour=red"]
    text = str(r)
    assert "dropped 3 rows: duplicate" in text and "dropped 2 rows: missing target" in text
    assert "\n" in text and text.startswith(f"csv {path}")


def test_imputation_and_scaling_use_train_rows_only(tmp_path):
    path, rows = messy(tmp_path)
    opts = {"name": "csv", "path": str(path), "target": "label", "missing": "mean", "normalize": False,
            "val_fraction": 0.2}
    b = data.build(opts, seed=1)
    r = b.meta.extra["report"]
    assert "missing feature value" not in r["dropped"] and r["rows_kept"] == 40  # filled, not dropped
    x, _ = all_of(b.train)
    ids = x[:, 0].long().tolist()
    train_sizes = [float(rows[i][1]) for i in ids if rows[i][1] not in ("", "-inf")]
    assert r["imputed"]["size"]["value"] == pytest.approx(np.mean(train_sizes))
    assert r["imputed"]["colour"]["strategy"] == "most_frequent"
    for split in (b.train, b.val, b.test):  # filled cells hold the train mean, in every split
        xs, _ = all_of(split)
        for row in xs:
            if rows[int(row[0])][1] in ("", "-inf"):
                assert row[1].item() == pytest.approx(np.mean(train_sizes), rel=1e-6)
    assert torch.all(x[:, 2:].sum(1) == 1)  # one-hot: exactly one colour each (the gap filled too)
    s = data.build({**opts, "normalize": True}, seed=1)
    xs, _ = all_of(s.train)
    assert torch.allclose(xs[:, :2].mean(0), torch.zeros(2), atol=1e-5)  # numeric columns standardised on train
    assert torch.allclose(xs[:, :2].std(0, unbiased=False), torch.ones(2), atol=1e-4)
    assert set(xs[:, 2:].unique().tolist()) == {0.0, 1.0}  # one-hot columns left as 0/1
    med = data.build({**opts, "missing": "median"}, seed=1).meta.extra["report"]["imputed"]["size"]["value"]
    assert med == pytest.approx(np.median(train_sizes))


def test_values_round_trip_and_splits_follow_the_seed(tmp_path):
    rows = [[i, i * 0.5, i % 3] for i in range(60)]
    path = write_csv(tmp_path / "t.csv", ["a", "b", "target"], rows)
    b = data.build({"name": "csv", "path": str(path), "normalize": False}, seed=0)
    assert b.meta.class_names == ["0", "1", "2"]
    seen = []
    for split in (b.train, b.val, b.test):
        x, y = all_of(split)
        for xi, yi in zip(x.tolist(), y.tolist()):
            assert xi[1] == xi[0] * 0.5 and yi == int(xi[0]) % 3
            seen.append(int(xi[0]))
    assert sorted(seen) == list(range(60))
    again, other = data.build({"name": "csv", "path": str(path)}, seed=0), data.build({"name": "csv", "path": str(path)}, seed=1)
    assert torch.equal(all_of(again.test)[1], all_of(b.test)[1])
    assert not torch.equal(all_of(again.test)[0], all_of(other.test)[0])


def test_regression_binary_and_ordinal(tmp_path):
    rng = np.random.default_rng(1)
    rows = [[f"{v:.4f}", ["a", "b"][i % 2], f"{2 * v + 0.1:.4f}"] for i, v in enumerate(rng.normal(size=50))]
    path = write_csv(tmp_path / "r.csv", ["x", "kind", "y"], rows)
    b = data.build({"name": "csv", "path": str(path), "target": "y"}, seed=0)
    assert b.meta.task == "regression" and b.meta.num_classes is None and all_of(b.train)[1].dtype == torch.float32
    o = data.build({"name": "csv", "path": str(path), "target": "y", "one_hot": False, "normalize": False}, seed=0)
    assert o.meta.extra["feature_names"] == ["x", "kind"] and set(all_of(o.train)[0][:, 1].tolist()) == {0.0, 1.0}
    bi = data.build({"name": "csv", "path": str(path), "target": "kind", "task": "binary"}, seed=0)
    assert bi.meta.task == "binary" and all_of(bi.train)[1].dtype == torch.float32
    with pytest.raises(DataError, match="not a number, but data.task is regression"):
        data.build({"name": "csv", "path": str(path), "target": "kind", "task": "regression"}, seed=0)


def test_errors_name_the_file_and_the_fix(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        data.build({"name": "csv", "path": str(tmp_path / "no.csv")}, seed=0)
    path = write_csv(tmp_path / "t.csv", ["a", "label"], [[1, 0], [2, 1]])
    with pytest.raises(DataError) as e:
        data.build({"name": "csv", "path": str(path), "target": "lable"}, seed=0)
    assert str(path) in str(e.value) and "did you mean 'label'" in str(e.value)
    path.write_text("a,label\n1,0\n2,1,3\n")
    with pytest.raises(DataError, match=r"t\.csv:3: 3 fields, but the header has 2"):
        data.build({"name": "csv", "path": str(path), "target": "label"}, seed=0)
    path.write_text("a,label\n,0\n,1\n")
    with pytest.raises(DataError, match="no rows left after cleaning"):
        data.build({"name": "csv", "path": str(path), "target": "label"}, seed=0)
    write_csv(path, ["name", "label"], [[f"n{i}", i % 2] for i in range(30)])
    with pytest.raises(DataError, match="'name' has .* distinct non-numeric values.*drop_columns"):
        data.build({"name": "csv", "path": str(path), "target": "label", "max_categories": 5}, seed=0)
