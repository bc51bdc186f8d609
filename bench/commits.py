"""One training command at two commits, side by side in one invocation: wall and CPU time, and the metrics.

    python -m bench.commits --before 2445638 [--repeats 2] [-- train.py overrides ...]

Each commit gets a ``git worktree`` of its own (in a temporary folder, removed at the end) and runs
``python train.py <overrides>`` there, in a process of its own with a fresh cache that holds only the converted
model (so that neither reads the other's reference log-probs). The runs alternate, before / now, ``--repeats``
times, so that a slow spell of the machine falls on both. Printed: every run's wall time, CPU time (user + system
of the run's processes, which other work on the machine changes much less), ``fit`` throughput and final
metrics; the ratios of the medians; and the largest difference of any final metric between the two commits.
The table is appended to ``bench/RESULTS.md``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from bench.common import ROOT, append_result, converted_model_cache, machine, markdown, timed_run


def run(tree: Path, overrides: list[str], work: Path) -> dict[str, Any]:
    """``python train.py <overrides>`` in ``tree``, in a fresh cache holding only the converted model."""
    out = work / "run"
    shutil.rmtree(work, ignore_errors=True)
    cache = converted_model_cache(work / "cache")
    times = timed_run([sys.executable, "train.py", *overrides, f"paths.cache_dir={cache}", f"hydra.run.dir={out}"], cwd=tree)
    metrics = json.loads((out / "metrics.json").read_text())
    return {
        **times,
        "fit_pairs_per_s": metrics["run"]["train_pairs_per_s_per_device"],
        "metrics": {key: value for key, value in metrics.items() if isinstance(value, float)},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--before", required=True, help="the earlier commit")
    parser.add_argument("--now", default="HEAD", help="the later commit (default HEAD)")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("overrides", nargs="*", help="train.py overrides (after --)")
    args = parser.parse_args()
    scratch = Path(tempfile.mkdtemp(prefix="bench-commits-"))
    trees = {}
    for label, commit in (("before", args.before), ("now", args.now)):
        trees[label] = scratch / label
        subprocess.run(["git", "worktree", "add", "--detach", str(trees[label]), commit], cwd=ROOT, check=True,
                       capture_output=True)
    commits = {label: subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=tree, capture_output=True, text=True,
                                     check=True).stdout.strip() for label, tree in trees.items()}
    runs: dict[str, list[dict[str, Any]]] = {"before": [], "now": []}
    try:
        for repeat in range(args.repeats):
            for label in ("before", "now"):
                result = run(trees[label], args.overrides, scratch / f"work-{label}")
                runs[label].append(result)
                print(f"{label} ({commits[label]}), run {repeat + 1}: {result['wall_s']:.1f} s wall, {result['cpu_s']:.1f} s CPU, "
                      f"{result['fit_pairs_per_s']} pairs/s in fit", flush=True)
    finally:
        for tree in trees.values():
            subprocess.run(["git", "worktree", "remove", "--force", str(tree)], cwd=ROOT, capture_output=True)
        shutil.rmtree(scratch, ignore_errors=True)
    rows = []
    for label in ("before", "now"):
        for number, result in enumerate(runs[label], start=1):
            rows.append({"commit": f"{label} ({commits[label]})", "run": number, "wall_s": result["wall_s"],
                         "cpu_s": result["cpu_s"], "fit_pairs_per_s": result["fit_pairs_per_s"],
                         "val/loss": result["metrics"].get("val/loss"),
                         "val/rewards/accuracies": result["metrics"].get("val/rewards/accuracies")})

    def median(label: str, key: str) -> float:
        return statistics.median(result[key] for result in runs[label])

    keys = sorted(set(runs["before"][0]["metrics"]) & set(runs["now"][0]["metrics"]))
    differences = {key: max(abs(a["metrics"][key] - b["metrics"][key]) for a in runs["before"] for b in runs["now"]) for key in keys}
    worst = max(differences.items(), key=lambda item: item[1]) if differences else ("none", 0.0)
    summary = (
        f"now / before, medians: wall {median('now', 'wall_s') / median('before', 'wall_s'):.3f}x, CPU "
        f"{median('now', 'cpu_s') / median('before', 'cpu_s'):.3f}x, fit throughput "
        f"{median('now', 'fit_pairs_per_s') / median('before', 'fit_pairs_per_s'):.3f}x. Largest difference of a final "
        f"metric between the commits (over {len(keys)} metrics): {worst[1]:.3g} ({worst[0]})"
    )
    table = markdown(rows) + "\n\n" + summary
    print(table)
    append_result("One training command at two commits", "python -m bench.commits " + " ".join(sys.argv[1:]),
                  {"before": commits["before"], "now": commits["now"], "repeats": args.repeats, "overrides": args.overrides},
                  table, machine())


if __name__ == "__main__":
    main()
