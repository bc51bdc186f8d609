"""Exact influence in bfloat16 against float32: the same pairs, the same bfloat16 weights, two precisions.

    python -m bench.influence_precision [--model random_qwen3_0_6b] [--pairs 256] [--val-pairs 64] [--no-record]
    # on a GPU
    python -m bench.influence_precision --model random_qwen3_0_6b --overrides trainer=gpu

A bfloat16 run holds its policy in bfloat16 (``model.dtype=bfloat16``, forced here) and scores the influence in
the policy's dtype (``score.influence.dtype: null``). This measures what that costs in agreement: the JVP
influence of the same training pairs, with the same validation pairs, computed once in bfloat16 (the validation
gradient and the JVP) and once in float32 from the same weights cast up exactly (``score.influence.dtype=float32``:
a float32 copy of the policy), both through the :class:`~prefalign.scoring.base.ScoreRunner`. Reported: the
Spearman correlation of the two score vectors, ``max |IF_bf16 - IF_fp32| / max |IF_fp32|``, the median relative
difference, the share of pairs whose sign agrees, the overlap of the two TIF selections (``tif``: the band
``10th < IF < 90th`` percentile) and each precision's time and pairs/s. The reference log-probs are the
bfloat16 reference pass's, shared by both.

Finite differences would not do this check: in bfloat16 a perturbation of the weights rounds away.
"""

from __future__ import annotations

import argparse
import logging
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from omegaconf import DictConfig

from bench.common import append_result, machine, markdown, sync, train_config
from prefalign.run_setup import RunSetup, setup_run
from prefalign.scoring.base import ScoreRunner, ScoringContext, read_scores
from prefalign.scoring.config import build_scorers
from prefalign.scoring.influence import InfluenceScorer
from prefalign.selection.analysis import overlap_coefficient, spearman
from prefalign.selection.rules import BandSelection

# prefalign's tif rule (conf/select/tif.yaml): keep 10th < IF < 90th percentile
TIF_BAND = (10.0, 90.0)


def run_influence(
    cfg: DictConfig, setup: RunSetup, policy: torch.nn.Module, policy_key: str, work: Path, name: str, **changes: Any
) -> dict[str, Any]:
    """The configured ``influence`` score with ``changes`` (e.g. ``parameters``, ``dtype``) of every training pair,
    through the score runner as ``bench.influence`` times it.

    Returns:
        ``scores`` (float64, in the training split's order), ``seconds`` (the whole run), ``validation_s`` (the
        validation gradient) and ``pairs_s`` (the JVP over the pairs).
    """
    (configured,) = build_scorers(cfg, ["influence"])
    options = {key: value for key, value in configured.settings.items() if key != "_target_"}
    options.update(changes)
    scorer = InfluenceScorer(**options)
    scorer.name, scorer.settings = name, {**configured.settings, **changes}
    datamodule = setup.datamodule
    context = ScoringContext(
        policy, policy_key, setup.loss, datamodule, setup.source, setup.cache_dir, work / name,
        logp_settings=setup.logp_settings, seed=cfg.seed, cfg=cfg,
    )
    pair_ids = [item.pair_id for item in datamodule.datasets["train"].items]
    sync()
    start = time.perf_counter()
    ScoreRunner([scorer], shard_size=len(pair_ids)).run(context)
    sync()
    elapsed = time.perf_counter() - start
    scores, provenance = read_scores(work / name / "scores.parquet")
    timings = provenance["timings_s"]
    values = torch.tensor(scores.set_index("pair_id").loc[pair_ids, name].to_numpy(), dtype=torch.float64)
    return {"scores": values, "seconds": elapsed, "validation_s": timings[f"prepare/{name}"], "pairs_s": timings[name]}


def tif_kept(pair_ids: list[str], values: torch.Tensor) -> list[str]:
    """The pairs prefalign's ``tif`` rule keeps on these scores."""
    frame = pd.DataFrame({"pair_id": pair_ids, "score": values.double().numpy()})
    return BandSelection("score", *TIF_BAND, name="tif").select(frame).kept


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="random_qwen3_0_6b", help="a conf/model name (held in bfloat16 here)")
    parser.add_argument("--pairs", type=int, default=256, help="training pairs to score")
    parser.add_argument("--val-pairs", type=int, default=64, help="validation pairs (the validation gradient)")
    parser.add_argument("--overrides", nargs="*", default=[], help="extra train.py overrides (trainer=gpu on a GPU)")
    parser.add_argument("--no-record", action="store_true", help="print only; do not append to bench/RESULTS.md")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    work = Path(tempfile.mkdtemp(prefix="bench-influence-precision-"))
    overrides = [f"model={args.model}", "model.dtype=bfloat16", f"data.max_train_pairs={args.pairs}",
                 f"data.max_val_pairs={args.val_pairs}", *args.overrides]
    cfg = train_config(overrides, work / "run")
    setup = setup_run(cfg)
    # the initial policy, also the reference: its bfloat16 reference pass gives both precisions the same inputs
    policy = setup.load_model().eval()
    setup.attach_reference(policy)
    pair_ids = [item.pair_id for item in setup.datamodule.datasets["train"].items]
    low = run_influence(cfg, setup, policy, "initial", work, "influence_bf16", dtype=None)
    high = run_influence(cfg, setup, policy, "initial", work, "influence_fp32", dtype="float32")
    bf16, fp32 = low["scores"], high["scores"]
    relative = (bf16 - fp32).abs() / fp32.abs().clamp_min(torch.finfo(torch.float64).tiny)
    rows = [
        {"precision": precision, "total_s": result["seconds"], "validation_s": result["validation_s"],
         "jvp_s": result["pairs_s"], "pairs_per_s_total": len(pair_ids) / result["seconds"],
         "pairs_per_s_jvp": len(pair_ids) / result["pairs_s"]}
        for precision, result in (("bfloat16", low), ("float32 (same weights, cast up)", high))
    ]
    agreement = {
        "Spearman(bf16, fp32)": spearman(pd.Series(bf16.numpy()), pd.Series(fp32.numpy())),
        "max abs(bf16 - fp32) / max abs(fp32)": float((bf16 - fp32).abs().max() / fp32.abs().max()),
        "median abs(bf16 - fp32) / abs(fp32)": float(relative.median()),
        "share of pairs with the same sign": float(((bf16 > 0) == (fp32 > 0)).double().mean()),
        "TIF overlap (bf16 selection, fp32 selection)": overlap_coefficient(tif_kept(pair_ids, bf16), tif_kept(pair_ids, fp32)),
        "bf16 speed-up over fp32 (JVP pairs/s)": high["pairs_s"] / low["pairs_s"],
    }
    table = markdown(rows) + "\n\n" + markdown([{"quantity": key, "value": value} for key, value in agreement.items()])
    print(table)
    settings = {"model": args.model, "pairs": len(pair_ids), "val_pairs": len(setup.datamodule.datasets["val"]),
                "policy": "initial weights, bfloat16", "device": str(setup.device), "loss": type(setup.loss).__name__,
                "overrides": args.overrides}
    if not args.no_record:
        append_result("Exact influence: bfloat16 vs float32 (same weights, same pairs)",
                      "python -m bench.influence_precision " + " ".join(sys.argv[1:]), settings, table, machine())
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
