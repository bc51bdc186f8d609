"""Wall time of ``select.py scores=<file> select=<rule>`` at two commits, side by side on the same scores file.

    python -m bench.select_start [--before HEAD~1] [--after .] [--rule lossdiff_irm] [--pairs 2000] [--repeats 3]

``--before`` and ``--after`` are commits (checked out in temporary ``git worktree`` folders, removed at the end)
or ``.`` for the working tree as it is. Both run with this interpreter, on one synthetic scores file
(``pair_id``, ``lossdiff``, ``irm``, ``influence``), alternating so that a busy machine slows both alike.
Prints the median of each and the heavy modules (torch, Lightning, transformers) each imported.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parents[1]
HEAVY = ("torch", "lightning", "transformers")


def write_scores(path: Path, pairs: int) -> Path:
    """A scores file with a provenance record, as the selection stage reads it."""
    rng = np.random.default_rng(0)
    frame = pd.DataFrame({"pair_id": [f"p{i}" for i in range(pairs)]})
    for column in ("lossdiff", "irm", "influence"):
        frame[column] = rng.normal(size=pairs)
    table = pa.Table.from_pandas(frame, preserve_index=False)
    pq.write_table(table.replace_schema_metadata({b"prefalign": json.dumps({"data_fingerprint": "bench"})}), path)
    return path


def checkout(commit: str, folder: Path) -> Path:
    """The tree of ``commit`` in ``folder`` (a detached worktree), or the working tree for ``.``."""
    if commit == ".":
        return ROOT
    subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", str(folder), commit], check=True, capture_output=True)
    return folder


def heavy_imports(tree: Path, scores: Path, rule: str, output: Path) -> list[str]:
    """The heavy top-level modules a selection run in ``tree`` imports (``-X importtime`` lists every import)."""
    done = subprocess.run(
        [sys.executable, "-X", "importtime", "select.py", f"scores={scores}", f"select={rule}", f"hydra.run.dir={output}"],
        cwd=tree, capture_output=True, text=True, check=True,
    )
    names = {line.rsplit("|", 1)[-1].strip() for line in done.stderr.splitlines() if line.startswith("import time:")}
    return sorted(name for name in names if name in HEAVY)


def timed_run(tree: Path, scores: Path, rule: str, output: Path) -> float:
    start = time.perf_counter()
    subprocess.run(
        [sys.executable, "select.py", f"scores={scores}", f"select={rule}", f"hydra.run.dir={output}"],
        cwd=tree, capture_output=True, check=True,
    )
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--before", default="HEAD~1")
    parser.add_argument("--after", default=".")
    parser.add_argument("--rule", default="lossdiff_irm")
    parser.add_argument("--pairs", type=int, default=2000)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="select_start_") as scratch:
        scratch = Path(scratch)
        scores = write_scores(scratch / "scores.parquet", args.pairs)
        trees = {"before": (args.before, checkout(args.before, scratch / "before")),
                 "after": (args.after, checkout(args.after, scratch / "after"))}
        try:
            times: dict[str, list[float]] = {name: [] for name in trees}
            for repeat in range(args.repeats):
                for name, (_, tree) in trees.items():
                    times[name].append(timed_run(tree, scores, args.rule, scratch / f"{name}{repeat}"))
            for name, (commit, tree) in trees.items():
                heavy = heavy_imports(tree, scores, args.rule, scratch / f"{name}_imports")
                runs = ", ".join(f"{t:.2f}" for t in times[name])
                print(f"{name:6} {commit:10} median {statistics.median(times[name]):.2f} s ({runs}); heavy imports: {heavy or 'none'}")
        finally:
            for _, tree in trees.values():
                if tree != ROOT:
                    subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(tree)], check=False, capture_output=True)


if __name__ == "__main__":
    main()
