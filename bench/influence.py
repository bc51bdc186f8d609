"""Exact influence versus its proxies and versus the per-pair autograd way, side by side in one run.

    python -m bench.influence [--pairs 256] [--reference-pairs 64] [--model smollm2_135m]

    # on a GPU (no hub needed): Qwen3-0.6B's shape with random weights, bf16
    python -m bench.influence --model random_qwen3_0_6b --overrides trainer=gpu

On the same warmed-up policy (the warm-up itself is shared by every score and excluded from the timings) and
the same training pairs, it measures:

* **LossDiff + IRM**: the auxiliary model aligned on the validation set (one epoch) and the forward passes of
  the policy and the auxiliary model over the pairs (the paper's LossDiff-IRM cost counts only the forward
  passes; both accountings are printed);
* **influence (JVP)**: one backward pass over the validation set for ``v``, then one forward-mode JVP per batch;
* **influence (per-pair autograd)**: one gradient per pair dotted with ``v``, the way the TIF paper computes
  IF, on the first ``--reference-pairs`` pairs; the Spearman correlation of the two score vectors on those pairs.
  Both paths have run before their timed passes (the JVP over all pairs, the per-pair path on one pair), and the
  two alternate batch by batch. The per-pair path runs the config's ``head_chunk_tokens`` (256): on 16 pairs,
  9.0-10.1 s against 10.4-12.6 s with the logits kept, so the default does not slow the baseline down.

The table is printed and appended to ``bench/RESULTS.md``.
"""

from __future__ import annotations

import argparse
import logging
import shutil
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import torch

from bench.common import append_result, machine, markdown, sync, train_config
from prefalign.stages.pipeline import warmup_config
from prefalign.reference import move_to
from prefalign.run_setup import setup_run
from prefalign.scoring.base import ScoreRunner, ScoringContext, read_scores
from prefalign.scoring.config import build_scorers
from prefalign.scoring.influence import InfluenceScorer, per_pair_influence
from prefalign.selection.analysis import spearman as rank_correlation
from prefalign.stages.train import run_training


class KeptInfluence(InfluenceScorer):
    """The timed scorer, keeping its validation gradient for the per-pair comparison (not computed twice)."""

    def release(self) -> None:
        pass  # released by main() once the comparison is done


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pairs", type=int, default=256, help="training pairs to score")
    parser.add_argument("--reference-pairs", type=int, default=64, help="pairs for the per-pair autograd reference")
    parser.add_argument("--model", default="smollm2_135m")
    parser.add_argument("--warmup-pairs", type=int, default=384, help="pairs of the (cached, untimed) warm-up")
    parser.add_argument("--val-pairs", type=int, default=None, help="validation pairs (default: all)")
    parser.add_argument("--overrides", nargs="*", default=[], help="extra train.py overrides")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    work = Path(tempfile.mkdtemp(prefix="bench-influence-"))
    overrides = [f"model={args.model}", f"data.max_train_pairs={args.warmup_pairs}", *args.overrides]
    if args.val_pairs:
        overrides.append(f"data.max_val_pairs={args.val_pairs}")
    cfg = train_config(overrides, work / "run")
    # the warm-up stage of the selection pipeline (cached), shared by all scores, not timed
    warm_cfg, warm_dir = warmup_config(cfg)
    if not (warm_dir / "metrics.json").exists():
        run_training(warm_cfg)
    setup = setup_run(cfg)
    setup.attach_reference(setup.load_model())
    policy = setup.source.load_policy(warm_dir).to(setup.device).eval()
    policy_key = f"warmup:{warm_dir.name}"
    setup.datamodule.restrict("train", [pair.pair_id for pair in setup.datamodule.pairs["train"][: args.pairs]])
    n_pairs = len(setup.datamodule.datasets["train"])

    def scoring_context(work_dir: Path) -> ScoringContext:
        return ScoringContext(
            policy, policy_key, setup.loss, setup.datamodule, setup.source, setup.cache_dir, work_dir,
            logp_settings=setup.logp_settings, seed=cfg.seed, cfg=cfg,
        )

    def run(scorers: list, name: str) -> tuple[pd.DataFrame, dict[str, float], float]:
        context = scoring_context(work / name)
        context.cache_dir = work / f"cache-{name}"  # auxiliary models are trained here, never taken from a cache
        sync()
        start = time.perf_counter()
        ScoreRunner(scorers, shard_size=n_pairs).run(context)
        sync()
        elapsed = time.perf_counter() - start
        scores, provenance = read_scores(work / name / "scores.parquet")
        return scores, provenance["timings_s"], elapsed

    proxies, proxy_timings, proxy_total = run(build_scorers(cfg, ["lossdiff", "irm"]), "proxies")
    (configured,) = build_scorers(cfg, ["influence"])
    options = {key: value for key, value in configured.settings.items() if key != "_target_"}
    scorer = KeptInfluence(**options)
    scorer.name, scorer.settings = configured.name, configured.settings
    influence, influence_timings, influence_total = run([scorer], "influence")

    # the per-pair autograd reference on the first pairs, with the same v
    context = scoring_context(work / "reference")
    dataset = setup.datamodule.datasets["train"]
    subset = list(range(min(args.reference_pairs, n_pairs)))
    batch_size = setup.datamodule.eval_batch_size
    # the JVP has run over all pairs above; the per-pair path runs once, untimed, before its timed passes, so that
    # neither side pays first-call costs in the comparison (a microbenchmark saw up to 5 s on a first per-pair batch)
    per_pair_influence(scorer._losses, move_to(setup.datamodule.collate([dataset[0]]), context.device), scorer._direction)
    reference_values, jvp_values = [], []
    autograd_time = jvp_time = 0.0
    for start in range(0, len(subset), batch_size):
        batch = move_to(setup.datamodule.collate([dataset[i] for i in subset[start : start + batch_size]]), context.device)
        sync()
        tick = time.perf_counter()
        reference_values.append(per_pair_influence(scorer._losses, batch, scorer._direction).cpu())
        autograd_time += time.perf_counter() - tick
        tick = time.perf_counter()
        jvp_values.append(scorer.score_batch(context, batch, {}).cpu())
        jvp_time += time.perf_counter() - tick
    reference = torch.cat(reference_values).double()
    fast = torch.cat(jvp_values).double()
    spearman = rank_correlation(pd.Series(fast.numpy()), pd.Series(reference.numpy()))
    relative_error = float((fast - reference).abs().max() / reference.abs().max())
    InfluenceScorer.release(scorer)

    forward_only = proxy_timings.get("policy_forward", 0.0) + proxy_timings.get("lossdiff", 0.0) + proxy_timings.get("irm", 0.0)
    rows = [
        {"what": "LossDiff + IRM (auxiliary training + forwards)", "seconds": proxy_total, "pairs_per_s": n_pairs / proxy_total},
        {"what": "  of which auxiliary model training", "seconds": proxy_timings.get("prepare/lossdiff", 0.0), "pairs_per_s": ""},
        {"what": "  of which forward passes (the paper's accounting)", "seconds": forward_only, "pairs_per_s": n_pairs / forward_only},
        {"what": "influence, JVP (validation gradient + JVP)", "seconds": influence_total, "pairs_per_s": n_pairs / influence_total},
        {"what": "  of which validation gradient", "seconds": influence_timings.get("prepare/influence", 0.0), "pairs_per_s": ""},
        {"what": "  of which JVP over the pairs", "seconds": influence_timings.get("influence", 0.0), "pairs_per_s": n_pairs / influence_timings.get("influence", 1.0)},
        {"what": f"influence JVP on the first {len(subset)} pairs", "seconds": jvp_time, "pairs_per_s": len(subset) / jvp_time},
        {"what": f"influence per-pair autograd on the same {len(subset)} pairs", "seconds": autograd_time, "pairs_per_s": len(subset) / autograd_time},
    ]
    ratios = {
        "influence / (LossDiff + IRM), full cost": influence_total / proxy_total,
        "influence / (LossDiff + IRM), forward passes only": influence_total / forward_only,
        "JVP speed-up over per-pair autograd (pairs/s)": autograd_time / jvp_time,
        "Spearman(JVP, autograd)": spearman,
        "max |JVP - autograd| / max |autograd|": relative_error,
    }
    table = markdown(rows) + "\n\n" + markdown([{"ratio": k, "value": v} for k, v in ratios.items()])
    print(table)
    settings = {"model": args.model, "pairs": n_pairs, "reference_pairs": len(subset), "val_pairs": len(setup.datamodule.datasets["val"]),
                "warmup_pairs": args.warmup_pairs, "batch_size": batch_size, "loss": type(setup.loss).__name__,
                "pack_length": cfg.pack_length, "influence_pack_length": scorer.pack_length}
    append_result("Exact influence vs LossDiff + IRM vs per-pair autograd", "python -m bench.influence " + " ".join(sys.argv[1:]),
                  settings, table, machine())
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
