"""The stages floor: a plain ``python train.py`` loads the training stage and what it builds on, and no
scoring, selection, evaluation or online code; ``select.py`` reads scores without torch
(``tests/selection/test_light_imports.py``)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# run train.py as `python train.py ...` would, then list the project modules the process imported
PROBE = """
import json, runpy, sys
sys.argv = ["train.py", *sys.argv[1:]]
try:
    runpy.run_path("train.py", run_name="__main__")
except SystemExit as stop:
    if stop.code not in (None, 0):
        raise
print("MODULES=" + json.dumps(sorted(name for name in sys.modules if name.split(".")[0] == "prefalign")))
"""

# what only the other commands need
NOT_FOR_PLAIN_TRAINING = ("prefalign.scoring", "prefalign.selection", "prefalign.evaluation", "prefalign.online")


def imported_modules(tmp_path: Path, *overrides: str) -> list[str]:
    command = [
        sys.executable, "-c", PROBE, "model=tiny_llama", "data.max_train_pairs=8", "data.max_val_pairs=4",
        "logger=csv", f"hydra.run.dir={tmp_path / 'run'}", f"paths.cache_dir={tmp_path / 'cache'}", *overrides,
    ]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-4000:]
    line = next(line for line in result.stdout.splitlines() if line.startswith("MODULES="))
    return json.loads(line.removeprefix("MODULES="))


def test_plain_training_imports_no_other_stage(tmp_path):
    modules = imported_modules(tmp_path)
    assert (tmp_path / "run" / "metrics.json").exists()  # it trained
    stages = [name for name in modules if name.startswith("prefalign.stages.")]
    assert stages == ["prefalign.stages.train"], stages
    others = [name for name in modules if name.startswith(NOT_FOR_PLAIN_TRAINING)]
    assert not others, others
    # the count, to be read in the test log: the project modules a plain training run needs
    print(f"{len(modules)} project modules: {modules}")
    assert "prefalign.module" in modules and "prefalign.losses" in modules
