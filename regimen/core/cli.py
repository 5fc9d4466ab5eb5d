"""The command-line surface every phase script shares.

Every script gets `--config PATH`, repeatable `--set dotted.key=value` and
`--help` from `make_parser`, and runs its `main()` through `run`, which turns a
`UserError` into one line on stderr and exit code 2 (bad input), and any other
exception into exit code 1 (an internal failure, traceback kept).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path
from typing import Callable, Sequence

from regimen.core import folders, machine, progress
from regimen.core.allocator import keep_freed_memory
from regimen.core.errors import UserError


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # argparse's own usage errors exit 2 too
        raise UserError(f"{self.prog}: {message}")


def path_arg(text: str) -> Path:
    """argparse `type` of every path option: a path the file system can take, or a usage error."""
    problem = machine.path_problem(text)
    if problem:
        raise argparse.ArgumentTypeError(f"{problem} (got {len(text)} characters)")
    return Path(text)


def make_parser(doc: str | None) -> argparse.ArgumentParser:
    """An argument parser with the shared `--config` and `--set` options.

    Args:
        doc: the script's module docstring; its first line becomes the
            description and the rest (the example command lines) the epilog.
    """
    lines = (doc or "").strip().splitlines()
    parser = _Parser(
        description=lines[0] if lines else None,
        epilog="\n".join(lines[1:]).strip() or None,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--config", default="config.yaml", type=path_arg, metavar="PATH",
                        help="the YAML config (default: config.yaml)")
    parser.add_argument("--set", dest="overrides", action="append", default=[],
                        metavar="KEY=VALUE",
                        help="override one config key, value parsed as YAML; repeatable "
                             "(e.g. --set data.T_window=6 --set model.convlstm.hidden_sizes=[8,8])")
    return parser


def apply_machine(config) -> None:
    """This process's torch threads and progress lines, from the config (see `machine.threads_to_use`)."""
    import torch  # not at the top: evolve.py refuses bad input before it loads torch

    machine.chosen_threads = machine.threads_to_use(config.threads)
    torch.set_num_threads(machine.chosen_threads[0])
    progress.INTERVAL_S = config.progress_interval_s


def setup_logging(verbose: bool = False) -> None:
    """Log to the console; run folders add their own `log.txt` handler."""
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(message)s", datefmt="%H:%M:%S")


def environment_rank() -> int:
    """This process's rank in a torchrun job (0 without one)."""
    return int(os.environ.get("RANK", "0")) if int(os.environ.get("WORLD_SIZE", "1")) > 1 else 0


def run(main: Callable[[Sequence[str] | None], None], argv: Sequence[str] | None = None) -> None:
    """Run a script's `main` and exit 0, 2 (bad input) or 1 (internal failure)."""
    keep_freed_memory()
    try:
        main(argv)
    except UserError as error:
        folders.abandon()
        if environment_rank() == 0:  # under torchrun every process stops; one says why
            print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
    sys.exit(0)
