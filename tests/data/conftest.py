"""Dataset tests: the file writers live in datafiles.py, importable from the test modules here."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
