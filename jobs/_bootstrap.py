"""Make `xqg_ray` importable when a job runs from an uploaded working dir (`ray job submit
--working-dir .`) where the package is not pip-installed: the repo root is the working dir."""

import sys
from pathlib import Path

ROOT = str(Path(__file__).resolve().parent.parent)
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)
