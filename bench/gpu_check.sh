#!/usr/bin/env bash
# The CUDA paths on a GPU machine: the end-to-end tests with device auto (cuda:0, mixed precision),
# the evolution's GPU slots, and bench/cmaes.py on CUDA. Usage: bash bench/gpu_check.sh [OUT_FOLDER]
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-runs/gpu_check}
mkdir -p "$OUT"
PYTHON=${PYTHON:-python3}
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
"$PYTHON" -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(), torch.cuda.get_device_name(0), 'bf16', torch.cuda.is_bf16_supported())"
"$PYTHON" -m pytest -q -x -p no:cacheprovider tests/test_training.py tests/test_phases.py::test_phases_1_to_3_leave_their_run_folders \
    tests/test_evaluate_export.py::test_the_bundle_verifies_and_reproduces_its_metrics_in_a_fresh_process \
    "tests/test_evolution.py::test_a_tiny_search_leaves_every_output" tests/test_cmaes.py 2>&1 | tee "$OUT/pytest.txt"
# Which device each trial of a search used: the slots pin CUDA_VISIBLE_DEVICES, evaluate.py reports it.
"$PYTHON" - <<'PY' 2>&1 | tee "$OUT/slots.txt"
import json, pathlib, subprocess, sys, tempfile, yaml
folder = pathlib.Path(tempfile.mkdtemp())
raw = {"data": {"root": str(folder / "data"), "T_window": 4, "stride": 3,
                "generator": {"num_sequences": 10, "sequence_length": 10, "height": 12, "width": 12}},
       "model": {"convlstm": {"hidden_sizes": [6, 6]}, "pgm": {"fit_steps": 20}}, "training": {"epochs": 1},
       "evolutionary": {"population_size": 4, "generations": 1, "elitism": 1, "low_fidelity": {"generations": 0},
                        "search_space": {"training.lr": {"type": "float", "low": 1e-3, "high": 1e-2}}}}
(folder / "c.yaml").write_text(yaml.safe_dump(raw))
subprocess.run([sys.executable, "evolve.py", "--config", str(folder / "c.yaml"), "--out", str(folder / "s"),
                "--parallel", "2"], check=True)
for trial in sorted((folder / "s" / "trials" / "g0").iterdir()):
    evaluation = json.loads((trial / "metrics.json").read_text())["evaluate_val"]
    print(trial.name, evaluation["provenance"]["device"], "peak MiB", evaluation["model"]["peak_memory_mb"],
          "mixed precision", yaml.safe_load((trial / "config.yaml").read_text())["training"]["mixed_precision"])
PY
"$PYTHON" bench/cmaes.py --device cuda 2>&1 | tee "$OUT/cmaes_cuda.txt"
