"""prefalign's exact influence against the attribution libraries, side by side on the same pairs.

    # kronfluence without its declared dependencies (torchvision would pull a CUDA build of torch)
    pip install -e ".[attribution]" && pip install --no-deps kronfluence==1.0.1
    python -m bench.influence_peers [--pairs 64] [--val-pairs 64] [--methods kronfluence ekfac less]
                                    [--model smollm2_135m] [--no-record]
    # a quick check on the tiny random Llama (a minute or two)
    python -m bench.influence_peers --model tiny_llama --pairs 16 --val-pairs 8 --warmup-pairs 0 --no-record

On the same policy (the warmed-up one of ``bench.influence``, cached and shared with it; ``--warmup-pairs 0``
scores the initial model), the same training pairs and the same validation pairs, it computes the influence of
every training pair on the validation loss as

* **prefalign** (exact, ``jvp``): ``IF(d) = <v, grad ell_d>`` with ``ell`` the training loss (DPO) of a pair
  against its cached reference log-probs and ``v = grad (1/|D_val|) sum_i ell(d_val_i)``, the mean validation
  gradient; one backward pass for ``v``, then one forward-mode JVP per batch of pairs
  (:class:`~prefalign.scoring.influence.InfluenceScorer`, through the :class:`~prefalign.scoring.base.ScoreRunner`
  as ``bench.influence`` times it). Twice: over every trainable parameter (prefalign's default, the exact IF the
  selection rules read) and over the weights of the decoder's ``nn.Linear`` layers only, the module set
  kronfluence tracks, so that the two libraries are compared on the same quantity.
* **kronfluence, identity** (``kronfluence``): a kronfluence ``Task`` whose training loss is the summed DPO loss
  of a batch of pairs (prefalign's loss module, the same cached reference log-probs) and whose measurement is the
  summed validation DPO loss, with ``aggregate_query_gradients=True``: its score is ``g_val . g_d`` with
  ``g_val`` the gradient of the *summed* validation loss, restricted to the tracked modules. Divided by
  ``|D_val|`` it is prefalign's IF over the same modules, same sign: kronfluence scores
  ``(preconditioned g_measurement) . g_train`` without negation, so a positive score means a gradient step on
  the pair lowers the validation loss, prefalign's convention too. The output projection is not tracked (its
  weight is the input embedding's under tied embeddings, whose gradient kronfluence's hooks would only see in
  part, and its per-pair gradient is ``vocabulary x hidden`` per pair); neither are the norms and embeddings,
  which kronfluence cannot track. Every module runs twice per forward pass (chosen, rejected), so the task sets
  ``has_shared_parameters``; kronfluence 1.0.1's pairwise-score hook then keeps the scores of one call only
  (measured: scores unrelated to the exact ones), its per-sample-gradient path sums them, so the task enables
  that path with an identity post-processing.
* **kronfluence, EK-FAC** (``ekfac``): the same task with kronfluence's ``ekfac`` strategy (covariances fitted
  on the training pairs under the true Fisher of the Bradley-Terry likelihood: preference labels drawn from the
  model's own ``sigma(beta h)``; damping by kronfluence's heuristic, 0.1 x the mean eigenvalue; the padded
  positions' activations enter the activation covariances, since no one attention mask fits both calls): the
  cost of the factors and of the scores, and how its TIF selection overlaps exact TIF.
* **LESS-style projected gradients** (``less``): each pair's gradient over the same ``nn.Linear`` weights, one
  pair at a time as LESS collects them, projected to ``--less-dim`` dimensions by a fixed random sign projection
  (a sparse JL transform, a count sketch: every coordinate goes to one of ``d`` buckets with a random sign, so
  ``E <Px, Py> = <x, y>`` with the variance of a dense Gaussian projection; a dense ``D x d`` matrix for the
  ~1.1e8 coordinates of the embedded model would hold 8.7e11 entries, 3.5 TB, to be regenerated from its seed
  for every pass, and cost 1.7 TFLOP a pair), then scored against the projected validation gradients:
  the inner product with their mean (an estimate of the exact IF) and LESS's mean cosine similarity. LESS's
  Adam preconditioning and LoRA are left out (full-weight gradients of a policy with no optimiser state).

Printed, and appended to ``bench/RESULTS.md`` unless ``--no-record``: per method its cost (seconds, pairs/s,
what is timed), the Spearman correlation of its scores with exact IF (same modules and all parameters), and the
overlap coefficient ``|A n B| / min(|A|, |B|)`` of its TIF selection (prefalign's ``tif`` rule: the band
``10th < score < 90th`` percentile) with exact TIF; the chance level of that overlap (a random subset of the
same size) is printed beside it, since with a few dozen pairs a band keeping 80% overlaps any other by 0.75 at
least. The two influence paths of kronfluence and prefalign run on their own batch layouts: prefalign packs each
prompt once with both completions (its default), kronfluence's hooks need one batch row per pair and call, so
its pairs run as two padded calls (prompt + chosen, prompt + rejected), batched by length like prefalign's.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.metadata
import logging
import re
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import pandas as pd
import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import Dataset

from bench.common import append_result, machine, markdown, sync, train_config
from bench.influence_precision import TIF_BAND, run_influence, tif_kept
from prefalign.losses import PreferenceLoss
from prefalign.stages.pipeline import warmup_config
from prefalign.reference import move_to
from prefalign.run_setup import setup_run
from prefalign.scoring.config import build_scorers
from prefalign.scoring.attribution import KRONFLUENCE_INSTALL, CountSketch, kronfluence_scores, linear_parameters, projected_gradients
from prefalign.scoring.influence import PairLosses
from prefalign.selection.analysis import overlap_coefficient, spearman
from prefalign.stages.train import run_training

PEERS = ("kronfluence", "ekfac", "less")


def timed_kronfluence(
    policy: torch.nn.Module, loss: PreferenceLoss, train: Dataset, val: Dataset, collate: Any, strategy: str,
    batch_size: int, work: Path, name: str,
) -> tuple[Tensor, dict[str, float]]:
    """:func:`prefalign.scoring.attribution.kronfluence_scores` (the ``ekfac`` scorer's passes), with the seconds of
    the factors, the validation (query) part, the training part and the whole."""
    clock: dict[str, float] = {}
    sync()
    start = time.perf_counter()
    scores = kronfluence_scores(policy, loss, train, val, collate, strategy, batch_size, work / "kronfluence", name,
                                clock=clock)
    sync()
    end = time.perf_counter()
    factors_done = start + clock["factors"]
    timings = {"factors": clock["factors"], "validation": clock["train_start"] - factors_done,
               "pairs": clock["end"] - clock["train_start"], "total": end - start}
    return scores, timings


def projected_in_order(losses: PairLosses, loader: Any, names: list[str], sketch: CountSketch, device: torch.device) -> Tensor:
    """``(n, d)``: every pair's projected gradient (:func:`prefalign.scoring.attribution.projected_gradients`), in
    dataset order (the loaders batch by length)."""
    rows: list[Tensor] = []
    positions: list[int] = []
    for batch in loader:
        batch = move_to(batch, device)
        rows.append(projected_gradients(losses, batch, names, sketch))
        positions.extend(batch["index"].tolist())
    projected = torch.cat(rows)
    out = torch.empty_like(projected)
    out[torch.tensor(positions)] = projected
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pairs", type=int, default=64, help="training pairs to score")
    parser.add_argument("--val-pairs", type=int, default=64, help="validation pairs (the measurement)")
    parser.add_argument("--methods", nargs="*", default=list(PEERS), choices=PEERS,
                        help="peers to run beside prefalign's exact JVP influence (which always runs)")
    parser.add_argument("--model", default="smollm2_135m", help="a conf/model name (tiny_llama for a quick check)")
    parser.add_argument("--warmup-pairs", type=int, default=384,
                        help="pairs of the (cached, untimed) warm-up epoch scored after; 0: score the initial model")
    parser.add_argument("--batch-size", type=int, default=8, help="pairs per batch of kronfluence's passes")
    parser.add_argument("--less-dim", type=int, default=8192, help="dimension of the LESS-style projection")
    parser.add_argument("--overrides", nargs="*", default=[], help="extra train.py overrides")
    parser.add_argument("--no-record", action="store_true", help="print only; do not append to bench/RESULTS.md")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if {"kronfluence", "ekfac"} & set(args.methods):
        try:
            import kronfluence  # noqa: F401
        except ImportError:
            sys.exit(f"kronfluence is not installed: {KRONFLUENCE_INSTALL}")

    work = Path(tempfile.mkdtemp(prefix="bench-influence-peers-"))
    overrides = [f"model={args.model}", f"data.max_train_pairs={max(args.warmup_pairs, args.pairs)}",
                 f"data.max_val_pairs={args.val_pairs}", *args.overrides]
    cfg = train_config(overrides, work / "run")
    setup = setup_run(cfg)
    setup.attach_reference(setup.load_model())
    if args.warmup_pairs:
        # the warm-up stage of the selection pipeline (cached, shared with bench.influence), not timed
        warm_cfg, warm_dir = warmup_config(cfg)
        if not (warm_dir / "metrics.json").exists():
            run_training(warm_cfg)
        policy, policy_key = setup.source.load_policy(warm_dir).to(setup.device), f"warmup:{warm_dir.name}"
    else:
        policy, policy_key = setup.load_model(), "initial"
    policy.eval()
    datamodule = setup.datamodule
    datamodule.restrict("train", [pair.pair_id for pair in datamodule.pairs["train"][: args.pairs]])
    train, val = datamodule.datasets["train"], datamodule.datasets["val"]
    n_pairs, n_val = len(train), len(val)
    pair_ids = [item.pair_id for item in train.items]
    linear_names = linear_parameters(policy)
    # score.influence.parameters takes regexes: one anchored pattern per name selects exactly these
    patterns = [f"^{re.escape(name)}$" for name in linear_names]
    (configured,) = build_scorers(cfg, ["influence"])
    pack_length = configured.settings.get("pack_length")  # of the influence's own passes (128 by default)

    def exact(parameters: str | list[str], name: str) -> dict[str, Any]:
        """prefalign's JVP influence through the score runner, as bench.influence times it."""
        result = run_influence(cfg, setup, policy, policy_key, work, name, parameters=parameters)
        return {**result, "parameters": "all trainable" if parameters == "trainable" else "decoder nn.Linear"}

    # no untimed warm-up passes: first-call costs (seconds) are small against these passes (minutes) on either side
    results: dict[str, dict[str, Any]] = {}
    results["prefalign JVP, all parameters"] = exact("trainable", "influence")
    results["prefalign JVP, nn.Linear"] = exact(patterns, "influence_linear")
    exact_all, exact_linear = results["prefalign JVP, all parameters"]["scores"], results["prefalign JVP, nn.Linear"]["scores"]
    # progress on stdout: kronfluence's Analyzer sets the root logger's level to its own (WARNING here)
    print(f"prefalign JVP: {results['prefalign JVP, all parameters']['seconds']:.0f} s (all parameters), "
          f"{results['prefalign JVP, nn.Linear']['seconds']:.0f} s (nn.Linear)", flush=True)
    for strategy, method in (("identity", "kronfluence"), ("ekfac", "ekfac")):
        if method not in args.methods:
            continue
        values, timings = timed_kronfluence(policy, setup.loss, train, val, datamodule.collate, strategy,
                                             args.batch_size, work, strategy)
        results[f"kronfluence {strategy}"] = {
            # kronfluence's measurement is the summed validation loss; prefalign's v is the mean
            "scores": values / n_val, "seconds": timings["total"], "validation_s": timings["validation"],
            "pairs_s": timings["pairs"], "factors_s": timings["factors"], "parameters": "decoder nn.Linear",
            "estimates_if": strategy == "identity"}
        print(f"kronfluence {strategy}: {({key: round(value, 1) for key, value in timings.items()})}", flush=True)
    if "less" in args.methods:
        losses = PairLosses(policy, setup.loss, dataclasses.replace(setup.logp_settings, pack_length=pack_length))
        names = ["module.policy." + name for name in linear_names]
        named = dict(losses.named_parameters())
        sync()
        start = time.perf_counter()
        sketch = CountSketch({name: named[name].shape for name in names}, args.less_dim, seed=cfg.seed)
        built = time.perf_counter()
        val_projected = projected_in_order(losses, datamodule.eval_loader("val"), names, sketch, setup.device)
        val_done = time.perf_counter()
        train_projected = projected_in_order(losses, datamodule.eval_loader("train"), names, sketch, setup.device)
        sync()
        end = time.perf_counter()
        inner = train_projected @ val_projected.mean(0)
        cosine = F.normalize(train_projected, dim=1) @ F.normalize(val_projected, dim=1).T
        timing = {"seconds": end - start, "validation_s": val_done - built, "pairs_s": end - val_done,
                  "factors_s": built - start, "parameters": "decoder nn.Linear"}
        results[f"LESS-style, d={args.less_dim}, inner product"] = {"scores": inner, **timing}
        results[f"LESS-style, d={args.less_dim}, mean cosine"] = {"scores": cosine.mean(1), **timing, "estimates_if": False}
        print(f"LESS-style: {timing['seconds']:.0f} s", flush=True)
        del losses, sketch, train_projected, val_projected

    exact_tif = tif_kept(pair_ids, exact_all)
    exact_linear_tif = tif_kept(pair_ids, exact_linear)
    chance = len(exact_tif) / n_pairs  # E|A n B| / |A| for a random B of the same size
    rows = []
    for method, result in results.items():
        values = result["scores"]
        kept = tif_kept(pair_ids, values)
        linear_ref = exact_linear if result["parameters"] != "all trainable" else exact_all
        rows.append({
            "method": method,
            "parameters": result["parameters"],
            "total_s": result["seconds"],
            "factors_or_setup_s": result.get("factors_s", 0.0),
            "validation_s": result["validation_s"],
            "pairs_part_s": result["pairs_s"],
            "pairs_per_s_total": n_pairs / result["seconds"],
            "pairs_per_s_pairs_part": n_pairs / result["pairs_s"] if result["pairs_s"] else "",
            "spearman_vs_exact_same_params": spearman(pd.Series(values.numpy()), pd.Series(linear_ref.numpy())),
            "spearman_vs_exact_all": spearman(pd.Series(values.numpy()), pd.Series(exact_all.numpy())),
            # only where the method estimates the IF itself (EK-FAC preconditions it, the cosine normalises it)
            "max_rel_diff_vs_exact_same_params": float((values - linear_ref).abs().max() / linear_ref.abs().max())
            if result.get("estimates_if", True) else "",
            "tif_kept": len(kept),
            "tif_overlap_vs_exact_all": overlap_coefficient(kept, exact_tif),
            "tif_overlap_vs_exact_same_params": overlap_coefficient(kept, exact_linear_tif if result["parameters"] != "all trainable" else exact_tif),
        })
    ratios: dict[str, Any] = {}
    jvp_linear = results["prefalign JVP, nn.Linear"]
    if "kronfluence identity" in results:
        peer = results["kronfluence identity"]
        # speed-ups of prefalign's JVP (the same nn.Linear weights, the same pairs): kronfluence's time / prefalign's
        ratios["speed-up of prefalign JVP over kronfluence identity, whole run (pairs/s)"] = peer["seconds"] / jvp_linear["seconds"]
        ratios["speed-up of prefalign JVP over kronfluence identity, training pairs part (pairs/s)"] = peer["pairs_s"] / jvp_linear["pairs_s"]
        ratios["speed-up of prefalign JVP over kronfluence identity, validation part"] = peer["validation_s"] / jvp_linear["validation_s"]
        same_sign = float(((peer["scores"] > 0) == (exact_linear > 0)).double().mean())
        ratios["share of pairs where kronfluence identity (divided by the validation pairs) and prefalign IF have the same sign"] = same_sign
    ratios["TIF overlap of a random subset of the same size (chance level)"] = chance
    ratios["Spearman(prefalign nn.Linear, prefalign all parameters)"] = spearman(pd.Series(exact_linear.numpy()), pd.Series(exact_all.numpy()))
    table = markdown(rows) + "\n\n" + markdown([{"ratio": key, "value": value} for key, value in ratios.items()])
    if not {"kronfluence", "ekfac"} & set(args.methods):
        table += "\n\nkronfluence not run (--methods)."
    print(table)

    versions = {"torch": torch.__version__}
    try:
        versions["kronfluence"] = importlib.metadata.version("kronfluence")
    except importlib.metadata.PackageNotFoundError:
        pass
    settings = {"model": args.model, "pairs": n_pairs, "val_pairs": n_val, "warmup_pairs": args.warmup_pairs,
                "methods": args.methods, "loss": type(setup.loss).__name__, "beta": setup.loss.beta,
                "kronfluence_batch_size": args.batch_size, "prefalign_eval_batch_size": datamodule.eval_batch_size,
                "influence_pack_length": pack_length, "less_dim": args.less_dim,
                "tif_band": list(TIF_BAND), "linear_parameters": len(patterns),
                "kronfluence_score": "g_val_sum . g_train / |D_val| (aggregate_query_gradients)", **versions}
    if not args.no_record:
        append_result("Influence: prefalign JVP vs kronfluence (identity, EK-FAC) vs LESS-style projection",
                      "python -m bench.influence_peers " + " ".join(sys.argv[1:]), settings, table, machine())
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
