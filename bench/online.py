"""Iterative DPO and Curri-DPO runs side by side: held-out success after every round (or stage), paired against
the initial model and against one-pass offline DPO on the same prompts.

    python -m bench.online runs/verifier_full runs/verifier_bees --offline outputs/offline [--label ...]
        [--single "RS-DPO=outputs/rs_dpo"] [--record]

Each argument is a ``train.py online=iterative`` (or ``online=curriculum``) run directory; ``--offline`` a plain
training run evaluated with the same settings (``evaluate.py policy=<run>``). The initial model's per-prompt
success comes from the baseline answers of the first round's evaluation (round 1's reference is the initial model).
Every success rate has its bootstrap 95% interval; the differences are paired over the 300 prompts
(:func:`prefalign.evaluation.metrics.paired_difference`). Also per round: the share of the round's sampled answers
that are correct (on its training prompts), the ground truth of the pairs it built and of those it trained on
(``flipped / ambiguous``: a rule's selection, e.g. BeeS's 25%), and the held-out reward accuracy on the run's
validation pairs. ``--record`` appends the table to ``bench/RESULTS.md``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import pandas as pd

from bench.common import append_result, machine
from prefalign.data.sources import read_rows
from prefalign.evaluation.metrics import bootstrap, paired_difference
from prefalign.online.pairs import ground_truth

RESAMPLES = 2000


def eval_dir(train_dir: Path, required: bool = True) -> Path | None:
    """The one evaluation folder of a trained run (``<run>/eval/<bench>-<judge>-<generation>-<key>/``)."""
    found = sorted(train_dir.glob("eval/*/eval.json"))
    if not found:
        if not required:
            return None
        sys.exit(f"{train_dir}: no evaluation (run evaluate.py policy={train_dir})")
    if len(found) > 1:
        sys.exit(f"{train_dir}: several evaluations ({', '.join(p.parent.name for p in found)}); keep one")
    return found[0].parent


def success(folder: Path, column: str = "single_policy") -> pd.Series:
    """Per-prompt success in % (the verifier's Single: 10 correct, 1 wrong), by item id."""
    values = {}
    for line in (folder / "generations.jsonl").read_text().splitlines():
        record = json.loads(line)
        values[record["item_id"]] = 100 * (record[column] - 1) / 9
    return pd.Series(values, dtype=float)


def cells(values: pd.Series, against: dict[str, pd.Series]) -> dict[str, str]:
    own = bootstrap(values.to_numpy(), resamples=RESAMPLES)
    row = {"success % [95% CI]": f"{own['value']:.1f} [{own['ci_low']:.1f}, {own['ci_high']:.1f}]"}
    for name, base in against.items():
        if base is values:
            row[f"vs {name}, pts [95% CI]"] = "-"
            continue
        common = values.index.intersection(base.index)
        diff = paired_difference(values[common].to_numpy(), base[common].to_numpy(), resamples=RESAMPLES)
        row[f"vs {name}, pts [95% CI]"] = f"{diff['value']:+.1f} [{diff['ci_low']:+.1f}, {diff['ci_high']:+.1f}]"
    return row


def val_accuracy(entry: dict[str, Any]) -> str:
    """The held-out preference accuracy of a round's policy on the run's validation pairs, with its interval."""
    metric = ((entry.get("heldout") or {}).get("val") or {}).get("rewards/accuracies")
    if not metric:
        value = entry.get("metrics", {}).get("val/rewards/accuracies")
        return "-" if value is None else f"{100 * value:.1f}"
    return f"{100 * metric['value']:.1f} [{100 * metric['ci_low']:.1f}, {100 * metric['ci_high']:.1f}]"


def kept_noise(step_dir: Path) -> str:
    """Ground truth of the pairs a step trained on, ``flipped / ambiguous``: those of its selection
    (``train/select/selection.json``) when a rule chose, else all of its pairs; ``-`` without the files or the
    built-in prompts' ground truth."""
    pairs_file = step_dir / "sample" / "pairs.jsonl"
    if not pairs_file.exists():
        return "-"
    selection = step_dir / "train" / "select" / "selection.json"
    kept = set(json.loads(selection.read_text())["kept"]) if selection.exists() else None
    counts = ground_truth([row.get("metadata") or {} for _, row in read_rows(pairs_file)
                           if kept is None or row["pair_id"] in kept])
    return "-" if counts is None else f"{counts['label_flipped']} / {counts['ambiguous']}"


def steps(run: Path) -> tuple[str, list[dict[str, Any]]]:
    metrics = json.loads((run / "metrics.json").read_text())
    if "rounds" in metrics:
        return "round", metrics["rounds"]
    return "stage", metrics["stages"]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", type=Path)
    parser.add_argument("--offline", type=Path, help="a one-pass offline DPO run evaluated with the same settings")
    parser.add_argument("--label", action="append", default=[], help="a name per run (default: its folder's name)")
    parser.add_argument("--single", action="append", default=[], metavar="LABEL=DIR",
                        help="another plain training run evaluated with the same settings (e.g. on RS-DPO pairs)")
    parser.add_argument("--record", action="store_true", help="append the table to bench/RESULTS.md")
    args = parser.parse_args(argv)
    labels = args.label + [run.name for run in args.runs[len(args.label):]]

    kind, first_steps = steps(args.runs[0])
    initial = success(eval_dir(Path(first_steps[0]["dir"]) / "train"), "single_baseline")
    against = {"initial": initial}
    rows = [{"run": "initial model", "step": "-", "pairs built": "-", "pairs trained": "-", "flipped / ambiguous": "-",
             **cells(initial, {}), "wall s (sample / train / eval)": "-"}]
    if args.offline:
        offline = success(eval_dir(args.offline))
        against["offline DPO"] = offline
        trained = json.loads((args.offline / "metrics.json").read_text())["run"]
        rows.append({"run": "one-pass offline DPO", "step": "-", "pairs built": "-", "pairs trained": trained["train_pairs"],
                     "flipped / ambiguous": "-", **cells(offline, {"initial": initial}),
                     "wall s (sample / train / eval)": f"- / {trained['elapsed_s']:.0f} / -"})
    for single in args.single:
        label, _, folder = single.partition("=")
        run_dir = Path(folder)
        trained = json.loads((run_dir / "metrics.json").read_text())["run"]
        rows.append({"run": label, "step": "-", "pairs trained": trained["train_pairs"],
                     **cells(success(eval_dir(run_dir)), against),
                     "wall s (sample / train / eval)": f"- / {trained['elapsed_s']:.0f} / -"})
    for label, run in zip(labels, args.runs):
        kind, entries = steps(run)
        for entry in entries:
            folder = eval_dir(Path(entry["dir"]) / "train", required=False)
            measured = cells(success(folder), against) if folder else {"success % [95% CI]": "not evaluated"}
            noise = entry.get("pairs_noise") or {}
            wall = entry["wall_s"]
            rows.append({
                "run": label,
                "step": f"{kind} {entry.get(kind)}",
                "pairs built": entry.get("pairs_built", entry.get("pairs")),
                "pairs trained": entry.get("pairs_kept", entry.get("pairs")),
                "flipped / ambiguous": f"{noise.get('label_flipped', '-')} / {noise.get('ambiguous', '-')}",
                "trained: flipped / ambiguous": kept_noise(Path(entry["dir"])),
                "sampled answers correct %": "-" if entry.get("response_success") is None else f"{100 * entry['response_success']:.1f}",
                **measured,
                "val accuracy %": val_accuracy(entry),
                "wall s (sample / train / eval)": f"{wall.get('sampling', '-')} / {wall['training']} / {wall['evaluation']}",
            })
    header = ["run", "step", "sampled answers correct %", "pairs built", "pairs trained", "flipped / ambiguous",
              "trained: flipped / ambiguous",
              "success % [95% CI]", *(f"vs {name}, pts [95% CI]" for name in against), "val accuracy %",
              "wall s (sample / train / eval)"]
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join("---" for _ in header) + " |"]
    lines += ["| " + " | ".join(str(row.get(key, "")) for key in header) + " |" for row in rows]
    table = "\n".join(lines)
    print(table)
    if args.record:
        command = "python -m bench.online " + " ".join(str(run) for run in args.runs) + (f" --offline {args.offline}" if args.offline else "")
        append_result("Iterative DPO on the embedded default: held-out success per round", command,
                      {"runs": labels, "resamples": RESAMPLES}, table, machine())


if __name__ == "__main__":
    main()
