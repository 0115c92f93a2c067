"""Issue 21, reads and writes outside the run: no command follows a symbolic link that leads out of its run
directory (reading or writing), recipe names are cleaned, and a recipe's run.out stays under the working
directory unless --out says otherwise (the folder it chose is printed)."""
from __future__ import annotations

import base64
import shutil

import pytest

import powertrain
from powertrain import cli

SECRET = b"\x89PNG\r\n\x1a\n" + b"the system's password hashes" * 8


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    return powertrain.train("xor", ["train.epochs=2"], out=tmp_path_factory.mktemp("paths") / "run", callbacks=[]).dir


@pytest.fixture
def run(finished, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(finished, out, symlinks=True)
    return out


@pytest.fixture
def secret(tmp_path):
    p = tmp_path / "outside" / "shadow.png"
    p.parent.mkdir()
    p.write_bytes(SECRET)
    return p


def one_line(capsys, argv, code=2) -> str:
    assert cli.main(argv) == code
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    return err


def test_report_does_not_embed_a_picture_linked_from_outside_the_run(run, secret, tmp_path, capsys):
    """The issue's case: a symlinked picture in the run folder leading to any file of the machine."""
    (run / "leak.png").symlink_to(secret)
    inside = run / "pictures" / "mine.png"
    inside.parent.mkdir()
    inside.write_bytes(b"\x89PNG\r\n\x1a\n" + b"a picture of the run" * 4)
    (run / "alias.png").symlink_to(inside)  # a link that stays inside the run is followed
    assert cli.main(["report", str(run), "--out", str(tmp_path / "r.html")]) == 0
    html = (tmp_path / "r.html").read_text()
    assert base64.b64encode(SECRET).decode() not in html and "leak.png" not in html
    assert html.count(base64.b64encode(inside.read_bytes()).decode()) == 2  # mine.png and alias.png


@pytest.mark.parametrize("name", ["metrics.jsonl", "eval.json", "bill.json"])
def test_a_run_file_linked_from_outside_is_refused_by_every_reader(run, tmp_path, capsys, name):
    target = tmp_path / "outside" / name
    target.parent.mkdir()
    shutil.move(run / name, target)
    (run / name).symlink_to(target)
    for argv in (["report", str(run), "--out", str(tmp_path / "r.html")], ["eval", str(run)], ["bill", str(run)]):
        err = one_line(capsys, argv)
        assert f"'{run / name}' is a symbolic link" in err and "outside the run directory" in err, (argv, err)
    assert not (tmp_path / "r.html").exists()
    assert cli.main(["runs", str(run.parent)]) == 0  # listed, refused, with the reason
    out = capsys.readouterr().out
    assert "refused" in out and "symbolic link" in out


def test_a_checkpoints_folder_linked_outside_is_refused_before_resume_writes(run, tmp_path, capsys):
    outside = tmp_path / "elsewhere"
    shutil.move(run / "checkpoints", outside)
    (run / "checkpoints").symlink_to(outside)
    (run / "eval.json").unlink()
    before = sorted(p.name for p in outside.iterdir())
    err = one_line(capsys, ["resume", str(run), "train.epochs=3"])
    assert "checkpoints' is a symbolic link" in err
    assert sorted(p.name for p in outside.iterdir()) == before  # nothing written there


def test_a_lock_file_linked_outside_is_not_truncated(run, tmp_path, capsys):
    """The writer's lock opens, truncates and writes its PID: through a link it would destroy another file."""
    victim = tmp_path / "precious.txt"
    victim.write_text("keep me")
    (run / ".lock").unlink(missing_ok=True)
    (run / ".lock").symlink_to(victim)
    (run / "eval.json").unlink()
    one_line(capsys, ["resume", str(run)])
    assert victim.read_text() == "keep me"


def test_an_export_folder_linked_outside_is_refused(run, tmp_path, capsys):
    outside = tmp_path / "outside-export"
    outside.mkdir()
    (run / "export").symlink_to(outside)
    err = one_line(capsys, ["export", str(run), "--format", "safetensors"])
    assert "export' is a symbolic link" in err and list(outside.iterdir()) == []


# ---------------------------------------------------------------- names and run.out
@pytest.mark.parametrize("name, folder", [
    ("../../escape", "escape"),  # the issue's
    ("/tmp/abs", "tmp-abs"),
    ("..", "run"),
    ("my run: v2", "my-run-v2"),
])
def test_a_recipe_name_is_cleaned_so_the_default_folder_stays_under_runs(tmp_path, monkeypatch, name, folder):
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    (work / "r.yaml").write_text(f"name: {name!r}\ndata: {{name: xor}}\nmodel: {{name: mlp, hidden: [4]}}\n"
                                 f"train: {{epochs: 1}}\n")
    run = powertrain.train(str(work / "r.yaml"), callbacks=[])
    assert run.recipe.name == folder
    assert run.dir.resolve().parent == (work / "runs").resolve() and run.dir.name.startswith(folder + "-")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["work"]  # nothing beside the working directory


@pytest.mark.parametrize("out", ["/etc/powertrain-run", "../beside", "runs/../../up", "~/in-home"])
def test_a_recipe_may_not_choose_a_folder_outside_the_working_directory(tmp_path, monkeypatch, capsys, out):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "r.yaml").write_text(f"data: {{name: xor}}\nmodel: {{name: mlp}}\nrun: {{out: '{out}'}}\n")
    err = one_line(capsys, ["train", str(tmp_path / "r.yaml")])
    assert "run.out" in err and "outside the working directory" in err and f"--out {out}" in err


def test_a_recipe_folder_under_the_working_directory_is_printed_and_out_may_go_elsewhere(tmp_path, monkeypatch,
                                                                                          capsys):
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    (work / "r.yaml").write_text("data: {name: xor}\nmodel: {name: mlp}\ntrain: {epochs: 1}\nrun: {out: runs/mine}\n")
    assert cli.main(["train", "r.yaml", "--quiet"]) == 0
    assert f"run folder {work / 'runs' / 'mine'} (the recipe's run.out" in capsys.readouterr().err
    assert (work / "runs" / "mine" / "eval.json").is_file()
    elsewhere = tmp_path / "elsewhere"
    assert cli.main(["train", "r.yaml", "--out", str(elsewhere), "--quiet"]) == 0  # the command line decides
    assert (elsewhere / "eval.json").is_file()
