"""The "Your own data" walkthrough of docs/data.md, run verbatim on a generated flood-mapping npz."""

from __future__ import annotations

import json
import re
import shlex

import numpy as np
import pytest

from conftest import ROOT, run_script
from flood_hmm import flood_arrays


def walkthrough() -> tuple[str, list[str]]:
    """The config file and the commands of the own-data section of docs/data.md."""
    text = (ROOT / "docs" / "data.md").read_text()
    section = text[text.index("## Your own data"):]
    end = section.find("\n## ", 1)  # the next section, if any
    section = section if end < 0 else section[:end]
    config = re.search(r"```yaml\n(.*?)```", section, re.S).group(1)
    commands = re.search(r"```bash\n(.*?)```", section, re.S).group(1).strip().splitlines()
    return config, commands


@pytest.mark.slow
def test_the_docs_walkthrough_runs_every_phase_on_your_own_npz(tmp_path):
    config, commands = walkthrough()
    (tmp_path / "mydata.yaml").write_text(config)
    (tmp_path / "data" / "raw").mkdir(parents=True)
    np.savez(tmp_path / "data" / "raw" / "floods.npz", **flood_arrays(8, t=10, h=8, w=12))
    for command in commands:
        words = shlex.split(command)
        assert words[0] == "python", command
        done = run_script(words[1], *words[2:], cwd=tmp_path)  # as `python <script>`, in tmp_path
        assert done.returncode == 0, f"{command}\n{done.stderr}"
    meta = json.loads(next((tmp_path / "data" / "processed").glob("floods-*/meta.json")).read_text())
    assert meta["class_names"] == ["land", "shallow", "deep", "river"]
    assert meta["channel_names"] == ["backscatter", "water_index"]
    exported = json.loads((tmp_path / "artifacts" / "floods" / "metrics.json").read_text())["export"]
    assert exported["test"]["uncalibrated"]["miou"] > 0.25  # four classes: better than chance
    assert (tmp_path / "runs" / "floods_search" / "best" / "metrics.json").is_file()
