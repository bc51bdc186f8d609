"""How much a selection depends on what the scores were computed with: the same rules applied to several score
files, compared by the overlap coefficient ``|A ∩ B| / min(|A|, |B|)`` (as ``select.py analyze=true`` does).

The TIF paper's two robustness analyses:

* (d) checkpoint dependence, its Epoch 1 / Epoch 2 columns: scores after one and after two warm-up epochs;
* (c) noise in the validation set: scores with clean validation pairs and with a fraction of them flipped
  (``data.val_flip_fraction``), which the validation-based scores (influence, LossDiff, IRM) read.

    python -m bench.overlap epoch1=<run>/score epoch2=<run>/score [--rules tif lossdiff irm lossdiff_irm random]
        [--reference tif] [--keep-fraction 0.67] [--title ...]

Two tables: each rule's overlap with the ``--reference`` rule on the same scores (one column per score set), and
each rule's overlap with its own selection on the first score set (how much the rule's choice moves).
Appended to ``bench/RESULTS.md``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from bench.common import append_result, machine
from prefalign.scoring.base import read_scores
from prefalign.selection.analysis import overlap_coefficient
from prefalign.selection.rules import Selection
from prefalign.stages.select import analysis_rule


def selections(scores_dir: Path, rules: list[str], keep_fraction: float | None, seed: int) -> dict[str, Selection]:
    """Each rule of ``rules`` (a ``conf/select`` name) on the scores in ``scores_dir``, at ``keep_fraction``."""
    scores, _ = read_scores(scores_dir)
    chosen = {}
    for name in rules:
        rule = analysis_rule(name, seed, keep_fraction)
        missing = [score for score in rule.scores if score not in scores.columns]
        if missing:
            sys.exit(f"{scores_dir}: rule {name} needs scores {missing}, which are not in the file")
        chosen[name] = rule.select(scores)
    return chosen


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("sets", nargs="+", help="label=<folder with scores.parquet>, two or more")
    parser.add_argument("--rules", nargs="+", default=["tif", "lossdiff", "irm", "lossdiff_irm", "random"])
    parser.add_argument("--reference", default="tif")
    parser.add_argument("--keep-fraction", type=float, default=0.67)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--title", default="Overlap of selections across score sets")
    parser.add_argument("--no-record", action="store_true")
    args = parser.parse_args()

    sets = {}
    for item in args.sets:
        label, sep, folder = item.partition("=")
        if not sep or not folder:
            sys.exit(f"{item!r}: give label=<folder with scores.parquet>")
        sets[label] = Path(folder)
    if len(sets) < 2:
        sys.exit("give two or more score sets")
    rules = list(dict.fromkeys([args.reference, *args.rules]))
    chosen = {label: selections(folder, rules, args.keep_fraction, args.seed) for label, folder in sets.items()}
    labels = list(sets)
    for label in labels[1:]:
        if chosen[label][args.reference].total != chosen[labels[0]][args.reference].total:
            sys.exit(f"{sets[label]} scores {chosen[label][args.reference].total} pairs, {sets[labels[0]]} "
                     f"{chosen[labels[0]][args.reference].total}: not the same pairs")

    lines = [f"Overlap with {args.reference} on the same scores (kept fraction {args.keep_fraction})", "",
             "| rule | " + " | ".join(labels) + " |", "| --- |" + " --- |" * len(labels)]
    for name in rules:
        cells = [f"{overlap_coefficient(chosen[l][name].kept, chosen[l][args.reference].kept):.3f}" for l in labels]
        kept = chosen[labels[0]][name].kept_fraction
        lines.append(f"| {name} ({100 * kept:.0f}% kept) | " + " | ".join(cells) + " |")
    lines += ["", f"Overlap of each rule's selection with its own on {labels[0]}", "",
              "| rule | " + " | ".join(labels[1:]) + " |", "| --- |" + " --- |" * (len(labels) - 1)]
    for name in rules:
        first = chosen[labels[0]][name].kept
        lines.append(f"| {name} | " + " | ".join(f"{overlap_coefficient(first, chosen[l][name].kept):.3f}" for l in labels[1:]) + " |")
    table = "\n".join(lines) + "\n"
    print(table)
    if not args.no_record:
        command = "python -m bench.overlap " + " ".join(args.sets) + f" --reference {args.reference} --keep-fraction {args.keep_fraction}"
        append_result(args.title, command, {"sets": {k: str(v) for k, v in sets.items()}, "rules": rules,
                                            "keep_fraction": args.keep_fraction, "seed": args.seed}, table, machine())


if __name__ == "__main__":
    main()
