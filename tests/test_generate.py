"""`generate()` and `powertrain generate`: text from a trained language-model run, against greedy decoding
done by hand with the checkpoint's weights; the one-line refusals; the gpt-stdlib recipe end to end."""
import math
import shutil
import sysconfig

import pytest
import torch
from safetensors.torch import load_model

import powertrain
from browser import check_report
from powertrain import models
from powertrain.cli import main
from powertrain.data import DataMeta
from powertrain.infer.generate import generate

TEXT = "".join(f"def f{i}(x):\n    return x + {i % 7}\n\n" for i in range(120))
MODEL = {"name": "gpt", "n_layer": 1, "n_head": 2, "n_embd": 16}
T = 16


@pytest.fixture(scope="module")
def lm_run(tmp_path_factory):
    """A tiny GPT trained for a few steps on a generated corpus of Python-like text."""
    root = tmp_path_factory.mktemp("lm")
    (root / "corpus.py").write_text(TEXT)
    recipe = {"data": {"name": "text", "path": str(root / "corpus.py"), "block_size": T, "val_fraction": 0.1},
              "model": MODEL,
              "train": {"max_steps": 8, "batch_size": 16, "lr": 1e-2, "log_every": 100, "device": "cpu"}}
    powertrain.train(recipe, out=root / "run", callbacks=[])
    return root / "run"


def hand_greedy(run_dir, prompt: str, n: int) -> str:
    """Greedy decoding with a GPT rebuilt from the newest checkpoint and the corpus' sorted characters."""
    itos = sorted(set(TEXT))
    meta = DataMeta((T,), "language_model", vocab_size=len(itos), input_dtype=torch.long)
    net = models.build(MODEL, meta).eval()
    newest = sorted((run_dir / "checkpoints").glob("step-*"))[-1]
    load_model(net, str(newest / "model.safetensors"))
    ids = [itos.index(c) for c in prompt]
    with torch.no_grad():
        for _ in range(n):
            ids.append(int(net(torch.tensor([ids[-T:]]))[0, -1].argmax()))
    return "".join(itos[i] for i in ids)


def test_generate_is_seeded_and_appends_exactly_max_new_tokens(lm_run):
    a = generate(lm_run, prompt="def ", max_new_tokens=30, temperature=1.0, top_k=None, seed=1)
    assert a == generate(lm_run, prompt="def ", max_new_tokens=30, temperature=1.0, top_k=None, seed=1)
    assert a != generate(lm_run, prompt="def ", max_new_tokens=30, temperature=1.0, top_k=None, seed=2)
    assert a.startswith("def ") and len(a) == 4 + 30 and set(a) <= set(TEXT)
    assert generate(lm_run, prompt="x", max_new_tokens=0) == "x"


def test_the_run_keeps_its_vocabulary_and_refuses_a_changed_corpus(lm_run, tmp_path):
    import json

    import yaml

    from powertrain.errors import RunDirError

    assert json.loads((lm_run / "vocab.json").read_text())["itos"] == sorted(set(TEXT))
    run = tmp_path / "run"
    shutil.copytree(lm_run, run)
    changed = TEXT + "# caf\u00e9\n"  # characters the run never saw
    (tmp_path / "corpus.py").write_text(changed)
    recipe = yaml.safe_load((run / "recipe.yaml").read_text())
    recipe["data"]["path"] = str(tmp_path / "corpus.py")
    (run / "recipe.yaml").write_text(yaml.safe_dump(recipe))
    with pytest.raises(RunDirError, match=rf"vocab.json': the run's data now gives another vocabulary "
                                          rf"\({len(set(changed))} tokens; the run was trained on {len(set(TEXT))}\)"):
        generate(run, prompt="def ", max_new_tokens=5)


def test_temperature_zero_is_greedy_decoding_by_hand(lm_run):
    # 4 + 40 tokens > block_size 16: the context is cropped to the last 16, as by hand
    greedy = generate(lm_run, prompt="def ", max_new_tokens=40, temperature=0, seed=1)
    assert greedy == hand_greedy(lm_run, "def ", 40)
    assert greedy == generate(lm_run, prompt="def ", max_new_tokens=40, temperature=0, seed=2)


def test_cli_prints_the_generated_text(lm_run, capsys):
    assert main(["generate", str(lm_run), "--prompt", "def ", "--max-new-tokens", "25", "--seed", "3"]) == 0
    # the CLI's defaults are generate()'s: temperature 0.8, top_k 40
    assert capsys.readouterr().out == generate(lm_run, prompt="def ", max_new_tokens=25, seed=3) + "\n"
    assert main(["generate", str(lm_run), "--prompt", "def ", "--max-new-tokens", "25", "--temperature", "1.5",
                 "--top-k", "0"]) == 0  # 0: no top-k limit
    assert capsys.readouterr().out == generate(lm_run, "def ", 25, temperature=1.5, top_k=None) + "\n"
    assert main(["generate", str(lm_run), "--prompt", "def ", "--max-new-tokens", "12", "--temperature", "0"]) == 0
    assert capsys.readouterr().out == hand_greedy(lm_run, "def ", 12) + "\n"


@pytest.fixture(scope="module")
def xor_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("xor") / "run"
    powertrain.train("xor", ["train.max_steps=1"], out=out, callbacks=[])
    return out


def refusal(args: list, capsys) -> str:
    code = main(["generate", *map(str, args)])
    captured = capsys.readouterr()
    assert code == 2 and captured.out == "", (code, captured)
    assert captured.err.startswith("powertrain: error: ") and captured.err.count("\n") == 1, captured.err
    return captured.err


@pytest.mark.parametrize("flags, words", [
    (["--max-new-tokens", "ten"], "--max-new-tokens: expected a whole number >= 0, got 'ten'"),
    (["--max-new-tokens", "-1"], "--max-new-tokens): expected a whole number >= 0, got -1"),
    (["--temperature", "hot"], "--temperature: expected a number >= 0"),
    (["--temperature", "-0.5"], "--temperature): expected a finite number >= 0"),
    (["--temperature", "nan"], "--temperature): expected a finite number >= 0"),
    (["--top-k", "2.5"], "--top-k: expected a whole number >= 1, or 0 for no limit"),
    (["--top-k", "-3"], "--top-k): expected a whole number >= 1"),
    (["--seed", "x"], "--seed: expected a whole number, got 'x'"),
    (["--prompt", ""], "--prompt): empty"),
    (["--prompt", "def \u03a9"], "character '\u03a9' is not in this corpus' vocabulary"),
])
def test_cli_refuses_bad_arguments_in_one_line(lm_run, capsys, flags, words):
    assert words in refusal([lm_run, *flags], capsys)


def test_cli_refuses_runs_it_cannot_generate_from(lm_run, xor_run, tmp_path, capsys):
    assert "does not exist" in refusal([tmp_path / "missing"], capsys)
    assert "needs a language model (model gpt) on a text dataset" in refusal([xor_run], capsys)
    fresh = tmp_path / "fresh"
    shutil.copytree(lm_run, fresh)
    shutil.rmtree(fresh / "checkpoints")
    assert "has no checkpoint yet" in refusal([fresh], capsys)


def test_gpt_stdlib_recipe_trains_and_generates(tmp_path, capsys):
    run = powertrain.train("gpt-stdlib", ["data.max_chars=200000", "train.max_steps=2"], out=tmp_path / "g",
                           callbacks=[])
    vocab = run.trainer.data.meta.vocab
    assert run.trainer.data.meta.extra["source"] == sysconfig.get_paths()["stdlib"]
    assert run.metrics["step"] == 2 and run.metrics["stop_reason"] == "completed"
    assert "test" not in run.metrics  # test_fraction 0: the val tail is the only held-out text
    assert abs(run.metrics["val"]["loss"] - math.log(vocab.size)) < 1  # 2 steps: still near uniform
    d, L, B = 128, 4, 256  # the recipe's model: nanoGPT's parameter formula, weight-tied, no biases
    assert models.count_params(run.trainer.model) == vocab.size * d + B * d + L * (12 * d * d + 2 * d) + d
    check_report(run.dir)  # its report page loads in Chromium with no error
    assert main(["generate", str(tmp_path / "g"), "--prompt", "def ", "--max-new-tokens", "5"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("def ") and len(out) == 4 + 5 + 1
