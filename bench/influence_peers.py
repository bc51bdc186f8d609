"""prefalign's exact influence against the attribution libraries, side by side on the same pairs.

    # the benchmark environment only (not a dependency of prefalign); --no-deps keeps the installed torch
    pip install --no-deps kronfluence==1.0.1 einops einconv opt-einsum safetensors
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
import copy
import dataclasses
import gc
import importlib.metadata
import logging
import math
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
from torch.utils.data import Dataset, Subset

from bench.common import append_result, machine, markdown, sync, train_config
from bench.influence_precision import TIF_BAND, run_influence, tif_kept
from prefalign.logprobs import completion_logps
from prefalign.losses import DPOLoss, PreferenceLoss
from prefalign.module import reference_logps
from prefalign.stages.pipeline import warmup_config
from prefalign.reference import move_to
from prefalign.run_setup import setup_run
from prefalign.scoring.config import build_scorers
from prefalign.scoring.influence import PairLosses, batch_rows
from prefalign.selection.analysis import overlap_coefficient, spearman
from prefalign.stages.train import run_training

PEERS = ("kronfluence", "ekfac", "less")


def linear_modules(model: torch.nn.Module) -> list[str]:
    """Names of the ``nn.Linear`` modules kronfluence tracks here: all but the output projection."""
    head = model.get_output_embeddings()
    return [name for name, module in model.named_modules() if isinstance(module, torch.nn.Linear) and module is not head]


def linear_parameters(model: torch.nn.Module) -> list[str]:
    """Names of the parameters of :func:`linear_modules` (weights, and biases where there are any)."""
    modules = set(linear_modules(model))
    return [name for name, _ in model.named_parameters() if name.rsplit(".", 1)[0] in modules]


def two_call_logps(model: torch.nn.Module, batch: dict[str, Any]) -> dict[str, Tensor]:
    """Summed completion log-probs of chosen and rejected, as two padded calls of ``B`` rows each (prompt +
    completion, no prompt sharing): every call's batch row is one pair, which is what kronfluence's per-example
    hooks read (prefalign's own layouts put ``2B`` completions, or several pairs, in one call)."""
    out = {}
    for name in ("chosen", "rejected"):
        logps, lengths = completion_logps(
            model, batch["prompt_input_ids"], batch["prompt_attention_mask"], batch[f"{name}_input_ids"],
            batch[f"{name}_attention_mask"], share_prompt=False,
        )
        out[f"{name}_logps"], out[f"{name}_lengths"] = logps, lengths
    return out


def make_task(loss: PreferenceLoss, modules: list[str], clock: dict[str, float]) -> Any:
    """The kronfluence ``Task``: per-pair DPO losses against the cached reference log-probs.

    Args:
        loss: prefalign's training loss (its ``pair_losses``, the same as the JVP differentiates).
        modules: the module names kronfluence tracks (:func:`linear_modules`).
        clock: gets ``train_start``, the time of the first training-loss call (the end of the query pass).
    """
    from kronfluence.task import Task

    class PairDPOTask(Task):
        # kronfluence 1.0.1's pairwise-score hook overwrites, instead of adding, the scores of a module called more
        # than once per forward pass (has_shared_parameters); its per-sample-gradient path adds them, and the
        # post-processing it enables is the identity below
        enable_post_process_per_sample_gradient = True

        def compute_train_loss(self, batch: Any, model: torch.nn.Module, sample: bool = False) -> Tensor:
            # the first training-loss call after the query pass marks the end of the validation part
            clock.setdefault("train_start", time.perf_counter())
            policy = two_call_logps(model, batch)
            reference = reference_logps(batch)
            if not sample:
                return loss(policy, reference).losses.sum()
            # the true Fisher (kronfluence's default for the covariances): the preference label drawn from the
            # model's own Bradley-Terry probability sigma(beta h), for plain DPO
            chosen_ratio, rejected_ratio = loss.log_ratios(policy, reference)
            logits = loss.beta * (chosen_ratio - rejected_ratio)
            keep = torch.bernoulli(torch.sigmoid(logits.detach())).bool()
            return -F.logsigmoid(torch.where(keep, logits, -logits)).sum()

        def compute_measurement(self, batch: Any, model: torch.nn.Module) -> Tensor:
            return loss(two_call_logps(model, batch), reference_logps(batch)).losses.sum()

        def get_influence_tracked_modules(self) -> list[str]:
            return modules

        def post_process_per_sample_gradient(self, module_name: str, gradient: Tensor) -> Tensor:
            return gradient

    return PairDPOTask()


def by_length(dataset: Any) -> list[int]:
    """Positions of ``dataset`` sorted by pair length, so that padded batches of neighbours pad little (the
    length grouping prefalign's loaders do; kronfluence takes a dataset, not a batch sampler)."""
    examples = [dataset[index] for index in range(len(dataset))]
    sizes = [len(e["prompt_ids"]) + max(len(e["chosen_ids"]), len(e["rejected_ids"])) for e in examples]
    return sorted(range(len(sizes)), key=lambda index: -sizes[index])


def kronfluence_scores(
    policy: torch.nn.Module, loss: PreferenceLoss, train: Dataset, val: Dataset, collate: Any, strategy: str,
    batch_size: int, work: Path, name: str,
) -> tuple[Tensor, dict[str, float]]:
    """kronfluence's pairwise scores of every training pair against the summed validation loss.

    Args:
        policy: the model scored (copied: kronfluence wraps the copy's modules).
        loss: the training loss.
        train, val: datasets of tokenised pairs with their reference log-probs.
        collate: the data module's batch collation.
        strategy: kronfluence's factor strategy (``identity``, ``ekfac``, ...).
        batch_size: pairs per batch of every pass.
        work: scratch folder (kronfluence writes its factors and scores there).
        name: names the analysis, its factors and scores.

    Returns:
        The scores ``(n_train,)`` in ``train``'s order (``g_val_sum . g_d`` for ``identity``), and the seconds of
        the factors, the validation (query) part, the training part and the whole.
    """
    from kronfluence.analyzer import Analyzer, prepare_model
    from kronfluence.arguments import FactorArguments, ScoreArguments
    from kronfluence.utils.dataset import DataLoaderKwargs

    clock: dict[str, float] = {}
    model = copy.deepcopy(policy).float()
    task = make_task(loss, linear_modules(model), clock)
    model = prepare_model(model, task)
    analyzer = Analyzer(
        analysis_name=name, model=model, task=task, cpu=not torch.cuda.is_available(),
        output_dir=str(work / "kronfluence"), log_level=logging.WARNING,
    )
    order = by_length(train)
    ordered = Subset(train, order)
    # tensors only: kronfluence's factor passes count a batch by its first value (accelerate's find_batch_size)
    loader_options = DataLoaderKwargs(collate_fn=lambda items: {k: v for k, v in collate(items).items() if k != "pair_ids"})
    factor_args = FactorArguments(
        strategy=strategy, has_shared_parameters=True,
        use_empirical_fisher=not (isinstance(loss, DPOLoss) and loss.label_smoothing == 0),
    )
    sync()
    start = time.perf_counter()
    analyzer.fit_all_factors(
        factors_name=f"{name}-factors", dataset=ordered, per_device_batch_size=batch_size,
        dataloader_kwargs=loader_options, factor_args=factor_args, overwrite_output_dir=True,
    )
    sync()
    factors_done = time.perf_counter()
    clock.clear()  # the factor passes call the training loss too
    # damping None: kronfluence's heuristic, 0.1 x the mean eigenvalue (the default 1e-8 is no damping at all, with
    # covariances fitted on a few dozen pairs); the identity strategy ignores it
    score_args = ScoreArguments(aggregate_query_gradients=True, damping_factor=None)
    analyzer.compute_pairwise_scores(
        scores_name=f"{name}-scores", factors_name=f"{name}-factors", query_dataset=val, train_dataset=ordered,
        per_device_query_batch_size=batch_size, per_device_train_batch_size=batch_size,
        dataloader_kwargs=loader_options, score_args=score_args, overwrite_output_dir=True,
    )
    sync()
    end = time.perf_counter()
    sorted_scores = analyzer.load_pairwise_scores(f"{name}-scores")["all_modules"][0].double()
    scores = torch.empty_like(sorted_scores)
    scores[torch.tensor(order)] = sorted_scores
    train_start = clock["train_start"]
    timings = {"factors": factors_done - start, "validation": train_start - factors_done, "pairs": end - train_start,
               "total": end - start}
    del analyzer, model, task
    gc.collect()  # the tracked modules and their trackers reference each other: free the copy before the next
    return scores, timings


class CountSketch:
    """A fixed random sign projection ``R^D -> R^d``: coordinate ``j`` of every parameter goes to bucket
    ``h(j)`` with sign ``s(j)`` (a sparse JL transform, Kane and Nelson's with one nonzero per column), so that
    ``E <Px, Py> = <x, y>`` with the variance ``(|x|^2 |y|^2 + <x, y>^2) / d`` of a dense Gaussian projection.

    Bucket and sign are one draw in ``[0, 2d)`` (``< d``: plus, else minus), stored as int32: 4 bytes a coordinate.
    """

    def __init__(self, shapes: dict[str, torch.Size], dim: int, seed: int = 0) -> None:
        generator = torch.Generator().manual_seed(seed)
        self.dim = dim
        self.buckets = {
            name: torch.randint(0, 2 * dim, (math.prod(shape),), generator=generator, dtype=torch.int32)
            for name, shape in shapes.items()
        }

    def __call__(self, gradients: dict[str, Tensor]) -> Tensor:
        sketch = torch.zeros(2 * self.dim, dtype=torch.float64)
        for name, gradient in gradients.items():
            sketch.index_add_(0, self.buckets[name], gradient.reshape(-1).double().cpu())
        return sketch[: self.dim] - sketch[self.dim :]


def projected_gradients(losses: PairLosses, loader: Any, names: list[str], sketch: CountSketch, device: torch.device) -> Tensor:
    """``(n, d)``: every pair's loss gradient over ``names``, one pair at a time (as LESS collects them), projected."""
    named = dict(losses.named_parameters())
    parameters = [named[name] for name in names]
    flags = {name: p.requires_grad for name, p in named.items()}
    for name, parameter in named.items():
        parameter.requires_grad_(name in names)
    rows: list[Tensor] = []
    positions: list[int] = []
    try:
        for batch in loader:
            batch = move_to(batch, device)
            for row in range(len(batch["pair_ids"])):
                gradients = torch.autograd.grad(losses(batch_rows(batch, slice(row, row + 1))).sum(), parameters, allow_unused=True)
                rows.append(sketch({name: g for name, g in zip(names, gradients) if g is not None}))
            positions.extend(batch["index"].tolist())
    finally:
        for name, parameter in named.items():
            parameter.requires_grad_(flags[name])
    projected = torch.stack(rows)
    # back to dataset order (the loaders batch by length)
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
            sys.exit("pip install --no-deps kronfluence==1.0.1 einops einconv opt-einsum safetensors (benchmark env only)")

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
        values, timings = kronfluence_scores(policy, setup.loss, train, val, datamodule.collate, strategy,
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
        val_projected = projected_gradients(losses, datamodule.eval_loader("val"), names, sketch, setup.device)
        val_done = time.perf_counter()
        train_projected = projected_gradients(losses, datamodule.eval_loader("train"), names, sketch, setup.device)
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
