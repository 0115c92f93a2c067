"""Using a trained run: predictions on files with the inference's bill (predict.py), text from a language
model (generate.py)."""
