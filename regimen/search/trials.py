"""One trial of evolve.py: a genome's config run through the phase scripts, in its own folder.

`run_trial(spec)` is what the local slots and the Dask workers execute. It
writes the trial's config (`trial.yaml`), runs `train_convlstm.py`, `fit_pgm.py`
(when the task has a PGM), optionally `train_joint.py`, then `evaluate.py
--split val`, one after the other in one subprocess (`regimen.search.trial_process`:
the scripts run as from the shell, with argument lists, no shell, but Python
and torch start once), in its own process group with the trial's timeout, and
reads the objectives from the trial's `metrics.json`. It never raises for the trial's
sake: a crash, a timeout or a NaN becomes a result with a `status` and a
`reason`, and the search goes on. The finished result is also written to the
folder's `result.json`, so a resumed search reuses it instead of training
again.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from regimen.core import files, machine, runs
from regimen.core.config import OBJECTIVES
from regimen.scores.metrics import MAIN_METRIC

PROJECT = Path(__file__).resolve().parents[2]  # the phase scripts live here (regimen/search/ is two below)
# The phase scripts of a trial; tests point this at fault-injecting stand-ins.
SCRIPTS = {"train_convlstm": "train_convlstm.py", "fit_pgm": "fit_pgm.py", "train_joint": "train_joint.py",
           "evaluate": "evaluate.py"}
LOG_TAIL = 400  # characters of a failed phase's stderr kept as its reason
TRAINING = ("train_convlstm", "train_joint")  # the phases that run data-parallel over a trial's GPUs


@dataclass
class TrialSpec:
    """What a worker needs to run one trial, and nothing else (it travels to Dask workers).

    Attributes:
        folder: the trial folder (absolute: workers run elsewhere).
        key: the trial cache's key (genome and fidelity).
        config_yaml: the resolved config of the trial.
        has_pgm: the task has a PGM (phase 2 runs).
        joint: phase 3 runs too.
        objectives: the names of the objectives read back.
        timeout_s: the whole trial's time limit.
        retries: how often a failed trial runs again.
        env: the slot's extra environment (devices, threads).
        until_epoch: phase 1 pauses after this epoch (a successive-halving rung); None: to the end.
        stage: the rung's name, which names its result and logs; "" for the trial's last.
        continues: a rung after the first: phase 1 resumes from the folder's checkpoint, and the
            folder is kept.
        processes: above 1, the training phases run under torchrun with this many processes
            (`evolutionary.gpus_per_trial`: one per GPU of the slot).
    """

    folder: str
    key: str
    config_yaml: str
    has_pgm: bool
    joint: bool
    objectives: list[str]
    timeout_s: float
    retries: int
    env: dict[str, str] = field(default_factory=dict)
    until_epoch: Optional[int] = None
    stage: str = ""
    continues: bool = False
    processes: int = 1


def trial_commands(folder: Path, has_pgm: bool, joint: bool, until_epoch: Optional[int] = None,
                   continues: bool = False, processes: int = 1) -> list[tuple[str, list[str]]]:
    """The (phase, command) pairs of a trial folder, in order (each attempt starts in an empty folder,
    unless it `continues` the folder's phase 1, to `until_epoch` or the end); with `processes` above
    1 the training phases run under torchrun on this machine (`--standalone`)."""
    trial = runs.TrialFolder(folder)
    train = ["--resume", str(trial.run.checkpoint)] if continues else []
    train += ["--save", str(trial.run.root)]
    if until_epoch is not None:
        train += ["--until-epoch", str(until_epoch)]
    phases = [("train_convlstm", train)]
    ckpt = trial.run.best
    if has_pgm:
        phases.append(("fit_pgm", ["--features", str(trial.run.features)]))
        if joint:  # phase 3 starts again from the continued phase 1
            phases.append(("train_joint", ["--resume", str(trial.run.checkpoint), "--save", str(trial.joint.root),
                                           *(["--overwrite"] if continues else [])]))
            ckpt = trial.joint.best
    phases.append(("evaluate", ["--ckpt", str(ckpt), "--split", "val", "--out", str(trial.root)]))
    torchrun = ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(processes)]
    return [(phase, [sys.executable, *(torchrun if processes > 1 and phase in TRAINING else []),
                     str(PROJECT / SCRIPTS[phase]), "--config", str(trial.config), *args])
            for phase, args in phases]


def run_trial(spec: TrialSpec) -> dict:
    """Run one trial (see the module docstring) and return its result."""
    trial = runs.TrialFolder(spec.folder)
    done = read_result(trial, spec.key, spec.stage)
    if done is not None:
        return done
    attempts, started = [], time.time()
    for _ in range(spec.retries + 1):
        result = _attempt(spec, trial)
        attempts.append(result["reason"])
        if result["status"] in ("ok", "out_of_memory"):  # the same genome would run out again
            break
    result.update(key=spec.key, attempts=len(attempts), started_unix=started,
                  seconds=round(time.time() - started, 3), reasons=attempts if result["status"] != "ok" else [])
    files.atomic_write_json(trial.result_of(spec.stage), result)
    return result


def read_result(trial: runs.TrialFolder, key: str, stage: str = "") -> Optional[dict]:
    """A finished trial's (or rung's) result, when it is the same genome and fidelity."""
    path = trial.result_of(stage)
    if not path.is_file():
        return None
    try:
        result = json.loads(path.read_text())
    except json.JSONDecodeError:
        return None
    return result if result.get("key") == key else None


def _attempt(spec: TrialSpec, trial: runs.TrialFolder) -> dict:
    if not spec.continues:
        if trial.root.exists():  # a killed attempt's leftovers (this trial has no result yet)
            shutil.rmtree(trial.root)
        trial.root.mkdir(parents=True)
        trial.config.write_text(spec.config_yaml)
    env = {**os.environ, **spec.env}
    phases = [(phase, str(trial.log(phase, spec.stage)), command[1:])
              for phase, command in trial_commands(trial.root, spec.has_pgm, spec.joint, spec.until_epoch,
                                                   spec.continues, spec.processes)]
    for _, log, _ in phases[1:]:  # a retried rung's: the last existing log names the phase it was in
        Path(log).unlink(missing_ok=True)
    launched = time.time()
    with open(phases[0][1], "w") as first_log:  # until the process opens it itself: its own start-up errors
        process = subprocess.Popen([sys.executable, "-m", "regimen.search.trial_process", json.dumps(phases)],
                                   stdin=subprocess.DEVNULL, stdout=first_log, stderr=subprocess.STDOUT,
                                   env=env, start_new_session=True, preexec_fn=machine.die_with_parent)
    try:
        code = process.wait(timeout=spec.timeout_s)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
        return _failed("timeout", f"{_last_phase(phases)}: still running after the trial's {spec.timeout_s:g} s")
    if code != 0:
        phase = _last_phase(phases)
        return _phase_failed(phase, code, trial.log(phase, spec.stage))
    return _read_objectives(spec, trial, launched)


def _last_phase(phases: list[tuple[str, str, list[str]]]) -> str:
    """The phase the trial process was in: the last whose log exists (the first phase's is made
    before the process starts)."""
    return [phase for phase, log, _ in phases if Path(log).exists()][-1]


def _phase_failed(phase: str, code: int, log: Path) -> dict:
    if code == -signal.SIGKILL:  # not ours (a timeout is handled apart): the out-of-memory killer's
        return _failed("out_of_memory", f"{phase} was killed by SIGKILL, as the kernel's out-of-memory "
                                        "killer does")
    if code < 0:
        return _failed("killed", f"{phase} was killed by signal {-code}")
    tail = log.read_text(errors="replace")[-LOG_TAIL:].strip().splitlines()
    out_of_memory = any("out of memory" in line.lower() or "MemoryError" in line for line in tail)
    return _failed("out_of_memory" if out_of_memory else "crashed",
                   f"{phase} exited {code}: {tail[-1] if tail else ''}")


def _read_objectives(spec: TrialSpec, trial: runs.TrialFolder, launched: float) -> dict:
    try:
        metrics = json.loads(trial.run.metrics.read_text())
        evaluation = metrics["evaluate_val"]
        values = [objective_value(name, evaluation) for name in spec.objectives]
    except (OSError, KeyError, TypeError, json.JSONDecodeError) as error:
        return _failed("crashed", f"no validation metrics in {trial.run.metrics.name} "
                                  f"({type(error).__name__}: {error})")
    if any(v is None or not math.isfinite(v) for v in values):
        return _failed("nan", f"objectives {dict(zip(spec.objectives, values))} are not finite")
    training = metrics.get("train_convlstm", {}).get("training", {})
    overhead = training["started_unix"] - launched if "started_unix" in training else None
    return {"status": "ok", "reason": "", "objectives": values, "overhead_s": overhead,
            "epochs": training.get("epochs_run"), "epochs_trained": training.get("epochs_this_run")}


def objective_value(name: str, evaluation: dict) -> Optional[float]:
    """One objective from evaluate.py's section of metrics.json (its final predictor)."""
    final = evaluation[evaluation["final"]]
    if name == "metric":
        return final[evaluation["metric"]]
    if name in ("latency", "memory", "parameters"):
        field = {"latency": "latency_ms_per_window", "memory": "peak_memory_mb", "parameters": "parameters"}[name]
        return float(evaluation["model"][field])
    if evaluation["task"] == "regression":
        return None  # calibration, boundaries and flicker need classes
    return {"ece": lambda: final["calibration"]["ece"], "nll": lambda: final["nll"],
            "boundary_f1": lambda: final["boundary"]["f1"],
            "flicker": lambda: final["temporal"]["flicker"]}[name]()


def higher_is_better(name: str, task: str) -> bool:
    return MAIN_METRIC[task][1] if name == "metric" else bool(OBJECTIVES[name])


def _failed(status: str, reason: str) -> dict:
    return {"status": status, "reason": reason, "objectives": None, "overhead_s": None}
