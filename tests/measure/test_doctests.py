"""The docstring examples of powertrain.measure run and hold."""
import doctest
import importlib

import pytest

MODULES = ["powertrain.measure", "powertrain.measure.flops", "powertrain.measure.peak",
           "powertrain.measure.carbon", "powertrain.measure.memory", "powertrain.measure.meter",
           "powertrain.measure.energy", "powertrain.measure.energy.base", "powertrain.measure.energy.rapl",
           "powertrain.measure.energy.nvml", "powertrain.measure.energy.estimate",
           "powertrain.measure.energy.idle", "powertrain.measure.bill"]


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
    result = doctest.testmod(importlib.import_module(name))
    assert result.failed == 0 and result.attempted > 0
