"""Set-up for the equivalence tests against imagen-pytorch 2.1.0 (``nox -s reference``)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import ref_env

ref_env.prepare()
