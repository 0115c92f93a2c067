"""Text from a trained language-model run: `generate(run_dir, prompt)` loads the run's newest
checkpoint and continues the prompt, token by token, with the run's own vocabulary.

>>> from powertrain.infer.generate import generate
>>> print(generate("runs/gpt-stdlib", prompt="def ", max_new_tokens=200))  # doctest: +SKIP
def __init__(self, name, value):
    ...

The vocabulary is rebuilt from the run's recipe (the same corpus, `max_chars` and level give the same
characters in the same order), so the corpus must still be readable; the run's vocab.json, written when
it was trained, must match it, else generation refuses (the ids would decode to other characters).
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Optional

import torch

from ..errors import RecipeError, RunDirError


def generate(run_dir: str | Path, prompt: str = "\n", max_new_tokens: int = 500, temperature: float = 0.8,
             top_k: Optional[int] = 40, seed: int = 0, checkpoint: Optional[str] = None) -> str:
    """The prompt followed by `max_new_tokens` sampled tokens, as text.

    `temperature` divides the logits (0: always the most likely token); `top_k` keeps only the k
    most likely tokens (None: all); `seed` makes the draws repeatable; `checkpoint` (e.g.
    'step-00000040'): that checkpoint's weights instead of the final ones."""
    from ..train.load import load_trainer
    from ..run.rundir import RunDir

    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 0:
        raise RecipeError(f"max_new_tokens (--max-new-tokens): expected a whole number >= 0, got {max_new_tokens!r}")
    if not math.isfinite(temperature) or temperature < 0:
        raise RecipeError(f"temperature (--temperature): expected a finite number >= 0 (0: greedy), got {temperature}")
    if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1):
        raise RecipeError(f"top_k (--top-k): expected a whole number >= 1, or none for no limit, got {top_k!r}")
    if not prompt:
        raise RecipeError("prompt (--prompt): empty; give at least one character, e.g. --prompt 'def '")
    run = RunDir.open(run_dir)
    recipe = run.recipe()
    if recipe.model.name != "gpt":
        raise RunDirError(f"'{run.path}' trained model '{recipe.model.name}' on data '{recipe.data.name}'; generating "
                          f"text needs a language model (model gpt) on a text dataset, such as the gpt-stdlib recipe")
    trainer = load_trainer(run, checkpoint)  # its final weights; a distilled GPT: no teacher needed
    model, vocab = trainer.model, trainer.data.meta.vocab
    model.eval()
    idx = vocab.encode(prompt).to(trainer.device)  # a character outside the corpus is a DataError naming it
    g = torch.Generator(device=trainer.device).manual_seed(seed)
    out = model.generate(idx, max_new_tokens, temperature=temperature, top_k=top_k, generator=g)
    return vocab.decode(out)
