"""Can the model be trusted: attributions checked for faithfulness (explain.py), a membership-inference
attack on the run (audit.py), and their figures (figures.py). Each reads a run directory and bills itself."""
