"""Run evolve.py as a user without the Dask extra would: `distributed` and `dask` cannot be imported
(and `importlib.util.find_spec` finds neither), whatever this environment has installed.

    python tests/without_dask.py ARGS...   # evolve.py ARGS, without Dask
"""

import runpy
import sys
from pathlib import Path

for name in ("dask", "distributed"):
    sys.modules[name] = None  # import fails; find_spec returns None
script = str(Path(__file__).resolve().parent.parent / "evolve.py")
sys.argv = [script, *sys.argv[1:]]
runpy.run_path(script, run_name="__main__")
