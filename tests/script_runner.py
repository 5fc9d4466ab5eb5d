"""Run a project script as `python script.py args` would, in a child forked from a server that has
already imported torch, NumPy, Matplotlib and the other heavy third-party modules.

A fresh interpreter spends about 1.6 s of its 2 s on those imports before a script can read its
config, and most end-to-end tests run several scripts. The child starts from an interpreter that
has imported no project module, so each run still imports, parses and checks everything of its
own: only the third-party imports are shared. Its environment, working directory, argv, sys.path,
exit code, stdout and stderr (at the file-descriptor level) are those of the fresh interpreter.
"""

from __future__ import annotations

import atexit
import json
import multiprocessing
import multiprocessing.connection
import os
import runpy
import subprocess
import sys
import tempfile
import threading
import traceback
from pathlib import Path

SERVER = multiprocessing.get_context("forkserver")
# And the heavy third-party modules the phase scripts import at their start: scikit-learn (the
# calibrators; hmmlearn's baselines import it too) takes about 1.2 s of every evaluate.py and export.py.
SERVER.set_forkserver_preload(["numpy", "torch", "matplotlib.pyplot", "yaml", "sklearn.isotonic", "hmmlearn.hmm",
                               "scipy.stats", "scipy.ndimage", "skimage.metrics", "h5py", "deap.tools"])
# One script at a time: multiprocessing's bookkeeping of its children is not safe from two threads.
# Process.start() polls every other unjoined child and reads its exit code from the pipe that
# child's join() reads (one of them then reads an EOF: exit code 255), and under load about one run
# in 600 still got another status when only starts and joins were serialised. The race is too rare
# for a test to catch; 1800 runs from 4 threads, each holding this lock throughout, got their own.
ONE_AT_A_TIME = threading.Lock()
# sys.path of `python script.py` after the script's folder: the child would otherwise inherit
# pytest's, which holds tests/ and bench/ too.
FRESH_PATH = json.loads(subprocess.run([sys.executable, "-c", "import json, sys; print(json.dumps(sys.path[1:]))"],
                                       capture_output=True, text=True, check=True).stdout)


def exit_code(error: SystemExit) -> int:
    """The status Python's own exit gives a SystemExit: None is 0, an int itself, anything else is
    printed to stderr and gives 1."""
    if error.code is None:
        return 0
    if isinstance(error.code, int):
        return error.code
    print(error.code, file=sys.stderr)
    return 1


def run_as_main(argv: list[str], cwd: str, env: dict[str, str], out: str, err: str) -> None:
    """In the forked child: become `python argv[0] argv[1:]`, then exit as that interpreter would."""
    os.chdir(cwd)
    os.environ.clear()
    os.environ.update(env)
    for fd, path in ((1, out), (2, err)):
        target = os.open(path, os.O_WRONLY)
        os.dup2(target, fd)
        os.close(target)
    sys.argv = list(argv)
    sys.path[:] = [str(Path(argv[0]).resolve().parent), *FRESH_PATH]
    try:
        runpy.run_path(argv[0], run_name="__main__")
        code = 0
    except SystemExit as error:
        code = exit_code(error)
    except BaseException:  # noqa: BLE001 - an uncaught error prints its traceback, as Python does
        traceback.print_exc()
        code = 1
    try:
        atexit._run_exitfuncs()
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def run(argv: list[str], cwd: Path, timeout: float) -> subprocess.CompletedProcess:
    """`subprocess.run(argv, capture_output=True, text=True, cwd=cwd, timeout=timeout)` for a
    Python script, with argv = [script, args...] (no interpreter)."""
    with tempfile.TemporaryDirectory() as folder:
        out, err = Path(folder) / "stdout", Path(folder) / "stderr"
        out.touch()
        err.touch()
        child = SERVER.Process(target=run_as_main, args=(argv, str(cwd), dict(os.environ), str(out), str(err)))
        with ONE_AT_A_TIME:
            child.start()
            finished = multiprocessing.connection.wait([child.sentinel], timeout)
            if not finished:
                child.kill()
            child.join()
        if not finished:
            raise subprocess.TimeoutExpired(argv, timeout, out.read_bytes(), err.read_bytes())
        return subprocess.CompletedProcess([sys.executable, *argv], child.exitcode,
                                           out.read_text(errors="replace"), err.read_text(errors="replace"))
