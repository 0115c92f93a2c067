"""`run.wandb=true`: an offline W&B run under the run directory, read back with W&B's own record format
(wandb.proto's Record messages in its .wandb log): the recipe as config, metrics by step equal to
metrics.jsonl's, the bill's figures, and the bill and eval.json in the summary and as files."""
import json
import struct
import time

import pytest

pytest.importorskip("wandb")

import powertrain  # noqa: E402


def read_wandb(path, tries: int = 20) -> list:
    """The Records of a .wandb file, read again (0.25 s apart) until its exit record is there: W&B's service may
    still be appending its last records after `finish` returned (a cut-short record at the end: seen once in CI)."""
    from google.protobuf.message import DecodeError

    for _ in range(tries - 1):
        try:
            records = _records(path)
            if any(r.WhichOneof("record_type") == "exit" for r in records):
                return records
        except (DecodeError, EOFError):
            pass
        time.sleep(0.25)
    return _records(path)


def _records(path) -> list:
    """A .wandb file: a 7-byte header (':W&B', magic, version), then 32 KiB blocks of chunks (crc32 4 bytes,
    length 2, type 1: full, first, middle, last), as W&B's store writes them."""
    from wandb.proto import wandb_internal_pb2 as pb

    data, block, pos, out, part = path.read_bytes(), 32768, 7, [], b""
    assert data[:4] == b":W&B"
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # too little room for a chunk header: the block is padded
            pos += block - pos % block
            continue
        _, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        if pos + 7 + length > len(data):
            raise EOFError(f"{path}: a chunk cut short at byte {pos}")
        chunk, pos = data[pos + 7:pos + 7 + length], pos + 7 + length
        if kind == 0:
            continue
        part = chunk if kind in (1, 2) else part + chunk
        if kind in (1, 4):
            rec = pb.Record()
            rec.ParseFromString(part)
            out.append(rec)
    return out


def _items(items) -> dict:
    return {"/".join(i.nested_key) or i.key: json.loads(i.value_json) for i in items}


def test_offline_wandb_run_holds_config_metrics_by_step_bill_and_eval(tmp_path, monkeypatch):
    monkeypatch.delenv("WANDB_MODE", raising=False)  # offline is the default
    for var in ("WANDB_CONFIG_DIR", "WANDB_CACHE_DIR", "WANDB_DATA_DIR", "WANDB_ARTIFACT_DIR"):
        monkeypatch.setenv(var, str(tmp_path / "wandb-home"))
    run = powertrain.train("digits-mlp", ["train.epochs=1", "train.log_every=5", "run.wandb=true", "train.device=cpu"],
                           out=tmp_path / "r", callbacks=[])
    kept = json.loads((run.dir / "wandb.json").read_text())
    (log,) = (run.dir / "wandb").glob(f"offline-run-*-{kept['id']}/run-{kept['id']}.wandb")
    records = read_wandb(log)
    kinds = [r.WhichOneof("record_type") for r in records]
    (meta,) = [r.run for r in records if r.WhichOneof("record_type") == "run"]
    config = _items(meta.config.update)
    assert meta.project == "digits-mlp" and config["train.epochs"] == 1 and config["model.name"] == "mlp"
    history = {}
    for r in records:
        if r.WhichOneof("record_type") == "history":
            history.setdefault(r.history.step.num, {}).update(_items(r.history.item))
    lines = [json.loads(x) for x in (run.dir / "metrics.jsonl").read_text().splitlines()]
    train = [x for x in lines if "loss" in x and "val" not in x]
    assert len(train) >= 5
    for x in train:  # every metrics.jsonl training record, at its step
        assert history[x["step"]]["train/loss"] == pytest.approx(x["loss"]) and history[x["step"]]["train/lr"] == x["lr"]
    for x in (x for x in lines if "val" in x):
        assert history[x["step"]]["val/accuracy"] == pytest.approx(x["val"]["accuracy"])
    summary = {}
    for r in records:
        if r.WhichOneof("record_type") == "summary":
            summary.update(_items(r.summary.update))
    bill = json.loads((run.dir / "bill.json").read_text())
    ev = json.loads((run.dir / "eval.json").read_text())
    assert summary["bill/flops_train"] == bill["flops"]["train_total"]
    assert summary["bill/energy_j"] == pytest.approx(bill["energy"]["total_j"])
    assert summary["test/accuracy"] == pytest.approx(ev["test"]["accuracy"])
    assert summary["bill"] == bill and summary["eval"] == ev
    files = log.parent / "files"
    assert json.loads((files / "bill.json").read_text()) == bill and json.loads((files / "eval.json").read_text()) == ev
    assert kinds.count("exit") == 1 and "offline-run-" in str(log)


def test_wandb_mode_from_the_environment_wins(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "disabled")
    for var in ("WANDB_CONFIG_DIR", "WANDB_CACHE_DIR", "WANDB_DATA_DIR"):
        monkeypatch.setenv(var, str(tmp_path / "wandb-home"))
    run = powertrain.train("xor", ["train.max_steps=3", "run.wandb=true"], out=tmp_path / "r", callbacks=[])
    assert run.bill and not list((run.dir / "wandb").glob("*run-*"))
