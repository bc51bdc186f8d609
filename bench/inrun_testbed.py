"""In-run influence on the test bed: TIF from the warm-up's in-run record against TIF from the end-of-warm-up JVP
scores, and the online TIF rule in both modes, each paired against Full Data.

    python -m bench.inrun_testbed [--out multirun/inrun_testbed] [--no-evaluate]

The regime is ``experiment=testbed``'s (the embedded default, the first 384 built-in pairs, one cached one-epoch
warm-up, every final run from the initial weights, 67% kept). Two sweeps, each with its own Full Data run:

* ``<out>/one_epoch``: Full Data; TIF on the warm-up policy's JVP scores (``pipeline.scores_from=scoring``); TIF on
  the warm-up's in-run IF at each pair's visit (``scores_from=warmup``, ``inrun_summary=last``: with one warm-up
  epoch every pair is visited once, so ``last``, ``mean`` and ``first`` are the same scores and select the same
  pairs) and on its learning-rate-weighted TracIn sum (``inrun_summary=tracin``); the online rule ``same_step``
  (the band applied at every step from the step's own scoring pass; nothing is dropped until 64 values are in).
* ``<out>/two_epochs``: Full Data and the online rule ``previous_visit`` for two epochs (it needs a second visit
  to drop anything).

Each run is a process of its own and is skipped when its ``metrics.json`` exists, so the script resumes. Then
``evaluate.py sweep=...`` writes each sweep's paired table (``results.md``: success on the 300 test prompts with
the verifier, held-out accuracy on the validation pairs, each paired against Full Data), and the script prints the
overlap of every TIF variant's kept pairs with the JVP TIF's.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

from bench.common import ROOT

TESTBED = ["experiment=testbed", "hydra.sweeper.params=null", "select.keep_fraction=0.67"]
ONE_EPOCH = {
    "0_full": ["select=full"],
    "1_tif": ["select=tif"],
    "2_tif_inrun_last": ["select=tif", "pipeline.scores_from=warmup", "pipeline.inrun_summary=last",
                         "select.label='TIF (in-run IF at the visit)'"],
    "3_tif_inrun_tracin": ["select=tif", "pipeline.scores_from=warmup", "pipeline.inrun_summary=tracin",
                           "select.label='TIF (in-run TracIn)'"],
    "4_online_same_step": ["select=full", "inrun=online_tif", "inrun.online.mode=same_step"],
}
TWO_EPOCHS = {
    "0_full": ["select=full", "trainer.max_epochs=2"],
    "1_online_previous_visit": ["select=full", "inrun=online_tif", "inrun.online.mode=previous_visit", "trainer.max_epochs=2"],
}


def train(run: Path, overrides: list[str]) -> float | None:
    if (run / "metrics.json").exists():
        print(f"{run.name}: done already", flush=True)
        return None
    command = [sys.executable, "train.py", *TESTBED, *overrides, f"hydra.run.dir={run}", "ckpt_path=last"]
    print(" ".join(command), flush=True)
    start = time.perf_counter()
    subprocess.run(command, cwd=ROOT, check=True)
    return time.perf_counter() - start


def kept(run: Path) -> set[str] | None:
    path = run / "select" / "selection.json"
    return set(json.loads(path.read_text())["kept"]) if path.exists() else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="multirun/inrun_testbed")
    parser.add_argument("--no-evaluate", action="store_true")
    args = parser.parse_args()
    out = Path(args.out)
    for sweep, runs in (("one_epoch", ONE_EPOCH), ("two_epochs", TWO_EPOCHS)):
        for name, overrides in runs.items():
            train(out / sweep / name, overrides)
    if not args.no_evaluate:
        for sweep in ("one_epoch", "two_epochs"):
            subprocess.run([sys.executable, "evaluate.py", f"sweep={out / sweep}"], cwd=ROOT, check=True)
    jvp = kept(out / "one_epoch" / "1_tif")
    print("\nkept pairs of each TIF variant against the JVP TIF's (same budget):")
    for name in ("2_tif_inrun_last", "3_tif_inrun_tracin"):
        other = kept(out / "one_epoch" / name)
        if jvp and other:
            print(f"  {name}: {len(other & jvp)} of {len(other)} kept pairs in common ({len(other & jvp) / len(jvp):.3f} of the JVP TIF's)")
    for sweep in ("one_epoch", "two_epochs"):
        results = out / sweep / "results.md"
        if results.exists():
            print(f"\n{results}:\n{results.read_text()}")


if __name__ == "__main__":
    main()
