"""A trial's phases in one process, so the trial pays Python's and torch's start-up once.

    python -m regimen.search.trial_process '[["train_convlstm", "LOG", ["train_convlstm.py", "--config", ...]], ...]'

Each phase script runs as `python script.py args` would (`runpy`, as `__main__`,
with its `sys.argv`; a command `-m module args` as `python -m module args`:
torchrun for a trial over several GPUs), its stdout and stderr going to its own
log file, one after the other: the phase scripts stay the interface of a trial. The first phase that
exits non-zero ends the process with its exit code; a signal that kills the
process (a timeout, the out-of-memory killer) is seen by the caller, which
blames the phase whose log was opened last.
"""

from __future__ import annotations

import gc
import json
import logging
import os
import runpy
import sys
import traceback


def run_phase(command: list[str]) -> int:
    """Run one phase script with `command` as its argv (or `-m module` and its arguments); its exit code."""
    root = logging.getLogger()
    handlers = list(root.handlers)
    module = command[1] if command[0] == "-m" else None
    sys.argv = [module, *command[2:]] if module else list(command)
    try:
        if module:
            runpy.run_module(module, run_name="__main__", alter_sys=True)
        else:
            runpy.run_path(command[0], run_name="__main__")
        code = 0
    except SystemExit as done:
        code = done.code if isinstance(done.code, int) else (0 if done.code is None else 1)
    except BaseException:  # what `python script.py` would print before exiting 1
        traceback.print_exc()
        code = 1
    finally:
        for handler in [h for h in root.handlers if h not in handlers]:  # a run folder's log.txt
            root.removeHandler(handler)
            handler.close()
        gc.collect()
    return code


def main(phases: list[tuple[str, str, list[str]]]) -> int:
    for _, log_path, command in phases:
        with open(log_path, "w") as log:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(log.fileno(), 1)
            os.dup2(log.fileno(), 2)
            code = run_phase(command)
            sys.stdout.flush()
            sys.stderr.flush()
        if code != 0:
            return code
    return 0


if __name__ == "__main__":
    sys.exit(main(json.loads(sys.argv[1])))
