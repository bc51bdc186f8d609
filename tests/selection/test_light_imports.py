"""``select.py scores=<file> select=<rule>`` reads a Parquet file and writes a JSON list: it needs no torch.

Importing torch, Lightning and transformers costs seconds before the stage does anything, so the selection
stage takes its scores reader from :mod:`prefalign.data.scores_file` and never from the scoring package.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from prefalign.data.scores_file import PROVENANCE_KEY

ROOT = Path(__file__).resolve().parents[2]
HEAVY = ("torch", "lightning", "transformers")

# a fresh interpreter: load select.py as a module, compose its config, run a selection, list the heavy modules
PROGRAM = """
import importlib.util, json, sys
from hydra import compose, initialize_config_dir
root, scores, output = sys.argv[1:4]
spec = importlib.util.spec_from_file_location("select_entry", f"{root}/select.py")
entry = importlib.util.module_from_spec(spec)
spec.loader.exec_module(entry)
with initialize_config_dir(config_dir=f"{root}/conf", version_base="1.3"):
    cfg = compose("select", overrides=[f"scores={scores}", "select=lossdiff_irm", f"paths.output_dir={output}"])
result = entry.run(cfg)
print(json.dumps({"kept": result["kept"], "heavy": sorted(m for m in sys.modules if m.split(".")[0] in %r)}))
""" % (HEAVY,)


def test_selection_stage_imports_no_torch(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    frame = pd.DataFrame({"pair_id": [f"p{i}" for i in range(50)], "lossdiff": rng.normal(size=50), "irm": rng.normal(size=50)})
    table = pa.Table.from_pandas(frame, preserve_index=False)
    scores = tmp_path / "scores.parquet"
    pq.write_table(table.replace_schema_metadata({PROVENANCE_KEY: json.dumps({"data_fingerprint": "f"})}), scores)

    done = subprocess.run(
        [sys.executable, "-c", PROGRAM, str(ROOT), str(scores), str(tmp_path / "run")],
        capture_output=True, text=True, timeout=120, check=False,
    )
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["kept"] > 0 and (tmp_path / "run" / "selection.json").exists()
    assert report["heavy"] == [], f"select.py imported {report['heavy']}"
