"""A model built for one input shape and handed another fails before training, in one line that names
the layer and both shapes; and the docstring examples of the model files run as written."""
import doctest
import importlib

import pytest
import torch

from powertrain import models
from powertrain.data import DataBundle, DataMeta
from powertrain.train.engine import Trainer
from powertrain.models.check import ShapeError
from powertrain.recipe import TrainConfig


def trainer_for(spec, built_for, data_shape, task="multiclass"):
    model = models.build(spec, DataMeta(built_for, task, 3))
    x = torch.randn(8, *data_shape)
    data = DataBundle.from_tensors((x, torch.randint(0, 3, (8,))), task=task, num_classes=3)
    return lambda: Trainer(model, data, TrainConfig(device="cpu"), callbacks=[])


@pytest.mark.parametrize("spec,built_for,data_shape,expected", [
    ({"name": "resnet", "widths": [8], "blocks": [1]}, (1, 28, 28), (3, 32, 32),
     r"ResNet: layer 'stem.0' got input of shape \(2, 3, 32, 32\) but expects in_channels=1"),
    ({"name": "rnn", "hidden": 8}, (1, 40), (3, 40),
     r"RNNClassifier: layer 'rnn' got input of shape \(2, 40, 3\) but expects input_size=1"),
    ({"name": "transformer", "d_model": 8, "n_head": 2}, (1, 40), (3, 40),
     r"TransformerClassifier: layer 'proj' got input of shape \(2, 3, 40\) but expects in_channels=1"),
    ({"name": "transformer", "d_model": 8, "n_head": 2}, (1, 40), (1, 60),
     r"layer 'positions' holds max_len=40 steps, but the input \(2, 1, 60\) has 60"),
    ({"name": "rnn", "hidden": 8}, (1, 40), (40,),
     r"layer 'input' expects samples shaped \(C, L\), got a batch of shape \(2, 40\)"),
])
def test_trainer_stops_a_mismatched_model_naming_layer_and_shapes(spec, built_for, data_shape, expected):
    with pytest.raises(ShapeError, match=expected):
        trainer_for(spec, built_for, data_shape)()


def test_autoencoder_fed_larger_images():
    model = models.build({"name": "autoencoder"}, DataMeta((1, 28, 28), "reconstruction"))
    x = torch.rand(8, 1, 32, 32)
    data = DataBundle.from_tensors((x, x), task="reconstruction")
    with pytest.raises(ShapeError, match=r"layer 'encoder.1' got input of shape \(2, 1024\) but expects in_features=784"):
        Trainer(model, data, TrainConfig(device="cpu"), callbacks=[])


def test_build_refuses_shapes_a_family_cannot_take():
    with pytest.raises(ShapeError, match=r"resnet: layer 'stem' needs samples shaped \(C, H, W\) or \(C, L\), but the data gives \(784,\)"):
        models.build({"name": "resnet"}, DataMeta((784,), "multiclass", 10))
    with pytest.raises(ShapeError, match=r"samples shaped \(L,\), \(C, L\), \(L, F\) or \(C, H, W\); the data gives \(1, 2, 3, 4\)"):
        models.build({"name": "rnn"}, DataMeta((1, 2, 3, 4), "multiclass", 10))
    with pytest.raises(ShapeError, match=r"token inputs must be shaped \(L,\) with meta.vocab_size set"):
        models.build({"name": "transformer"}, DataMeta((12,), "multiclass", 2, extra={"input_dtype": torch.long}))
    with pytest.raises(ShapeError, match=r"layer 'proj' takes patches of 8 steps, but the sequences have 5 \(data shape \(1, 5\)\)"):
        models.build({"name": "transformer", "patch": 8}, DataMeta((1, 5), "multiclass", 2))


@pytest.mark.parametrize("module", ["autoencoder", "gpt", "resnet", "rnn", "transformer"])
def test_docstring_examples_run(module):
    result = doctest.testmod(importlib.import_module(f"powertrain.models.{module}"))
    assert result.attempted > 0 and result.failed == 0
