"""The attribution libraries' influence estimates as scorers: kronfluence's EK-FAC and LESS-style projected gradients.

Both estimate how a training pair moves the mean validation loss, as the exact influence
(:class:`~prefalign.scoring.influence.InfluenceScorer`) does, but by the approximations the attribution field
uses at scale. As scorers they sit beside exact IF in every rule, analysis, noise-detection table and LDS.

* ``ekfac`` (:class:`EKFACScorer`): kronfluence's influence function (Grosse et al., 2023, "Studying Large
  Language Model Generalization with Influence Functions", Eq. 13 with the EK-FAC curvature of Sec. 2.2.3;
  George et al., 2018): ``score(d) = g_val^T (G + lambda I)^{-1} grad ell_d / |D_val|``, ``G`` the
  eigenvalue-corrected Kronecker-factored Fisher of the decoder's ``nn.Linear`` layers, fitted on the training
  pairs, ``g_val`` the gradient of the summed validation loss. With ``strategy=identity`` it is exact IF over the
  same layers (``G`` dropped). Its library, kronfluence, computes the whole training set in one pass of its own
  (factors, then scores), so the scorer does it in :meth:`~EKFACScorer.prepare` and hands each batch its values;
  a resumed run computes them again.
* ``projection`` (:class:`ProjectionScorer`): LESS's gradient features (Xia et al., ICML 2024, Sec. 3: per-example
  gradients projected by a random map, then compared with the validation gradients): each pair's gradient, one
  pair at a time as LESS collects them, projected to ``dim`` dimensions by a count sketch; the score is the inner
  product with the mean projected validation gradient (an unbiased estimate of exact IF, ``measure=inner``) or
  LESS's mean cosine similarity (``measure=cosine``). LESS's Adam preconditioning and its LoRA warm-up are left
  out: the policy scored has no optimiser state. The projection is prefalign's own code: dattri 0.3's CPU
  projector (``BasicProjector``) multiplies by dense Rademacher or Gaussian blocks regenerated for every batch,
  ``D x d`` of them (``1.1e8 x 8192`` for the embedded model: ~1e12 draws and 1.8 TFLOP a pair), and its sparse
  one (``sjlt``) is a CUDA extension; bergson 2.5 needs transformers 5 and torchvision (a CUDA build of torch
  with them) and collects gradients of a language-modelling loss over its own dataset pipeline, with no pairwise
  loss. A count sketch is the sparse JL transform with one nonzero per coordinate: ``O(D)`` a pair on any device.

Both are approximations of the influence, by design: say so beside any number they give.
"""

from __future__ import annotations

import copy
import dataclasses
import gc
import logging
import math
import shutil
import time
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import Subset

from prefalign import distributed
from prefalign.logprobs import completion_logps
from prefalign.losses import DPOLoss, PreferenceLoss
from prefalign.module import reference_logps
from prefalign.reference import move_to
from prefalign.scoring.base import Scorer, ScoringContext
from prefalign.scoring.influence import PairLosses, batch_rows

log = logging.getLogger(__name__)

KRONFLUENCE_INSTALL = "pip install -e '.[attribution]' && pip install --no-deps kronfluence==1.0.1"


def linear_modules(model: torch.nn.Module) -> list[str]:
    """Names of the ``nn.Linear`` modules kronfluence tracks: all but the output projection (tied to the input
    embedding in most small models, whose gradient kronfluence's hooks would see only in part; its per-pair
    gradient is also ``vocabulary x hidden``)."""
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


def make_task(loss: PreferenceLoss, modules: list[str], on_train_loss: Any = None) -> Any:
    """The kronfluence ``Task`` of a preference loss: per-pair losses against the cached reference log-probs.

    Args:
        loss: the training loss (its per-pair losses, the same as the exact influence differentiates).
        modules: the module names kronfluence tracks (:func:`linear_modules`).
        on_train_loss: called at every training-loss call (benchmarks time the end of the query pass with it).
    """
    from kronfluence.task import Task

    class PairLossTask(Task):
        # kronfluence 1.0.1's pairwise-score hook overwrites, instead of adding, the scores of a module called more
        # than once per forward pass (has_shared_parameters: chosen and rejected are two calls); its
        # per-sample-gradient path adds them, and the post-processing it enables is the identity below
        enable_post_process_per_sample_gradient = True

        def compute_train_loss(self, batch: Any, model: torch.nn.Module, sample: bool = False) -> Tensor:
            if on_train_loss is not None:
                on_train_loss()
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

    return PairLossTask()


def by_length(dataset: Any) -> list[int]:
    """Positions of ``dataset`` sorted by pair length, so that padded batches of neighbours pad little (the
    length grouping prefalign's loaders do; kronfluence takes a dataset, not a batch sampler)."""
    examples = [dataset[index] for index in range(len(dataset))]
    sizes = [len(e["prompt_ids"]) + max(len(e["chosen_ids"]), len(e["rejected_ids"])) for e in examples]
    return sorted(range(len(sizes)), key=lambda index: -sizes[index])


def kronfluence_scores(
    policy: torch.nn.Module, loss: PreferenceLoss, train: Any, val: Any, collate: Any, strategy: str,
    batch_size: int, work: Any, name: str, damping: float | None = None, clock: dict[str, float] | None = None,
) -> Tensor:
    """kronfluence's pairwise scores of every training pair against the summed validation loss.

    Args:
        policy: the model scored (copied: kronfluence wraps the copy's modules; float16/bfloat16 copies are
            promoted to float32 for the factors' eigendecompositions).
        loss: the training loss.
        train, val: datasets of tokenised pairs with their reference log-probs.
        collate: the data module's batch collation.
        strategy: kronfluence's factor strategy (``identity``, ``diagonal``, ``kfac``, ``ekfac``).
        batch_size: pairs per batch of every pass.
        work: scratch folder (kronfluence writes its factors and scores there).
        name: names the analysis, its factors and scores.
        damping: kronfluence's ``damping_factor``; ``None`` is its heuristic, 0.1 x the mean eigenvalue (its own
            default, 1e-8, is no damping at all with covariances fitted on a few hundred pairs).
        clock: gets ``factors`` (seconds), ``train_start`` (the first training-loss call of the score pass, the
            end of the query part) and ``end`` as ``time.perf_counter`` values.

    Returns:
        ``(n_train,)`` in ``train``'s order: ``g_val_sum . P g_d`` (``P`` the strategy's inverse curvature; the
        identity for ``identity``). Divide by ``|D_val|`` for the mean validation loss.
    """
    from kronfluence.analyzer import Analyzer, prepare_model
    from kronfluence.arguments import FactorArguments, ScoreArguments
    from kronfluence.utils.dataset import DataLoaderKwargs

    clock = clock if clock is not None else {}
    model = copy.deepcopy(policy)
    if next(model.parameters()).dtype in (torch.float16, torch.bfloat16):
        model = model.float()
    stamps: dict[str, float] = {}
    task = make_task(loss, linear_modules(model), lambda: stamps.setdefault("train_start", time.perf_counter()))
    model = prepare_model(model, task)
    analyzer = Analyzer(
        analysis_name=name, model=model, task=task, cpu=not torch.cuda.is_available(),
        output_dir=str(work), log_level=logging.WARNING, disable_tqdm=not distributed.is_main(),
    )
    order = by_length(train)
    ordered = Subset(train, order)
    # tensors only: kronfluence's factor passes count a batch by its first value (accelerate's find_batch_size)
    loader_options = DataLoaderKwargs(collate_fn=lambda items: {k: v for k, v in collate(items).items() if k != "pair_ids"})
    factor_args = FactorArguments(
        strategy=strategy, has_shared_parameters=True,
        use_empirical_fisher=not (type(loss) is DPOLoss and loss.label_smoothing == 0),
    )
    start = time.perf_counter()
    analyzer.fit_all_factors(
        factors_name=f"{name}-factors", dataset=ordered, per_device_batch_size=batch_size,
        dataloader_kwargs=loader_options, factor_args=factor_args, overwrite_output_dir=True,
    )
    clock["factors"] = time.perf_counter() - start
    stamps.clear()  # the factor passes call the training loss too
    score_args = ScoreArguments(aggregate_query_gradients=True, damping_factor=damping)
    analyzer.compute_pairwise_scores(
        scores_name=f"{name}-scores", factors_name=f"{name}-factors", query_dataset=val, train_dataset=ordered,
        per_device_query_batch_size=batch_size, per_device_train_batch_size=batch_size,
        dataloader_kwargs=loader_options, score_args=score_args, overwrite_output_dir=True,
    )
    clock.update(stamps, end=time.perf_counter())
    sorted_scores = analyzer.load_pairwise_scores(f"{name}-scores")["all_modules"][0].double()
    scores = torch.empty_like(sorted_scores)
    scores[torch.tensor(order)] = sorted_scores
    del analyzer, model, task
    gc.collect()  # the tracked modules and their trackers reference each other: free the copy at once
    return scores


class EKFACScorer(Scorer):
    """``ekfac``: kronfluence's influence of each pair on the mean validation loss (module doc), an approximation.

    Args:
        strategy: kronfluence's curvature: ``ekfac`` (default), ``kfac``, ``diagonal`` or ``identity`` (no
            curvature: exact IF over the same layers, the check that the two agree).
        damping: kronfluence's damping; ``null`` is its heuristic (0.1 x the mean eigenvalue).
        batch_size: pairs per batch of kronfluence's passes.

    The tracked layers are the decoder's ``nn.Linear`` modules (:func:`linear_modules`): kronfluence cannot track
    embeddings or norms. Under LoRA those are the adapters' ``nn.Linear`` layers and the frozen base layers alike;
    use ``influence`` for the adapters alone.
    """

    name = "ekfac"
    label = "EK-FAC influence (kronfluence)"
    STRATEGIES = ("ekfac", "kfac", "diagonal", "identity")

    def __init__(self, strategy: str = "ekfac", damping: float | None = None, batch_size: int = 8) -> None:
        if strategy not in self.STRATEGIES:
            raise ValueError(f"score.ekfac.strategy must be one of {list(self.STRATEGIES)}, got {strategy!r}")
        if damping is not None and not damping > 0:
            raise ValueError(f"score.ekfac.damping must be positive or null (the heuristic), got {damping!r}")
        if not (isinstance(batch_size, int) and batch_size > 0):
            raise ValueError(f"score.ekfac.batch_size must be a positive integer, got {batch_size!r}")
        self.strategy, self.damping, self.batch_size = strategy, damping, batch_size
        self._values: dict[str, float] = {}

    def prepare(self, context: ScoringContext) -> None:
        try:
            import kronfluence  # noqa: F401
        except ImportError as error:
            raise ImportError(f"scores=[ekfac] needs kronfluence: {KRONFLUENCE_INSTALL}") from error
        if distributed.world_size() > 1:
            raise RuntimeError("scores=[ekfac] runs in one process (kronfluence's own passes); run score.py without a launcher")
        datamodule = context.datamodule
        train, val = datamodule.datasets["train"], datamodule.datasets["val"]
        work = context.work_dir / f"kronfluence-{self.name}"
        try:
            scores = kronfluence_scores(
                context.policy, context.loss, train, val, datamodule.collate, self.strategy, self.batch_size, work,
                self.name, self.damping,
            )
        finally:
            shutil.rmtree(work, ignore_errors=True)
        # kronfluence's measurement is the summed validation loss; the influence's v is the mean
        scores = scores / len(val)
        self._values = {item.pair_id: float(value) for item, value in zip(train.items, scores.tolist())}

    def score_batch(self, context: ScoringContext, batch: dict[str, Any], shared: dict[str, Tensor]) -> Tensor:
        return torch.tensor([self._values[pair_id] for pair_id in batch["pair_ids"]], dtype=torch.float64)

    def release(self) -> None:
        self._values = {}


class CountSketch:
    """A fixed random sign projection ``R^D -> R^d``: coordinate ``j`` of every parameter goes to bucket
    ``h(j)`` with sign ``s(j)`` (a sparse JL transform, Kane and Nelson's with one nonzero per column), so that
    ``E <Px, Py> = <x, y>`` with the variance ``(|x|^2 |y|^2 + <x, y>^2 - 2 sum_j x_j^2 y_j^2) / d``, below a
    dense Gaussian projection's ``(|x|^2 |y|^2 + <x, y>^2) / d``.

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


def projected_gradients(losses: PairLosses, batch: dict[str, Any], names: list[str], sketch: CountSketch) -> Tensor:
    """``(B, d)``: every pair's loss gradient over ``names``, one pair at a time (as LESS collects them), projected."""
    named = dict(losses.named_parameters())
    parameters = [named[name] for name in names]
    flags = {name: p.requires_grad for name, p in named.items()}
    for name, parameter in named.items():
        parameter.requires_grad_(name in names)
    rows: list[Tensor] = []
    try:
        for row in range(len(batch["pair_ids"])):
            gradients = torch.autograd.grad(losses(batch_rows(batch, slice(row, row + 1))).sum(), parameters, allow_unused=True)
            rows.append(sketch({name: g for name, g in zip(names, gradients) if g is not None}))
    finally:
        for name, parameter in named.items():
            parameter.requires_grad_(flags[name])
    return torch.stack(rows)


class ProjectionScorer(Scorer):
    """``projection``: LESS-style projected-gradient influence (module doc), an approximation of exact IF.

    Args:
        dim: the projection's dimension ``d`` (LESS uses 8192); the inner product's relative error shrinks as
            ``1/sqrt(d)``.
        measure: ``inner`` (``<P g_d, mean_i P g_val_i>``, an unbiased estimate of exact IF over the same
            parameters) or ``cosine`` (LESS's score: the mean cosine similarity with the validation pairs).
        parameters: ``linear`` (the decoder's ``nn.Linear`` weights, as kronfluence and LESS track them),
            ``trainable``, ``all``, or a list of name regexes (:func:`~prefalign.inrun.ghost.select_parameters`).
        seed: the projection's seed (``null``: the run's seed).
        pack_length: row length of the validation pass's packed batches (``null``: padded).
    """

    name = "projection"
    label = "Projected gradients (LESS-style)"

    def __init__(
        self, dim: int = 8192, measure: str = "inner", parameters: str | list[str] = "linear", seed: int | None = None,
        pack_length: int | None = 128,
    ) -> None:
        if not (isinstance(dim, int) and dim > 0):
            raise ValueError(f"score.projection.dim must be a positive integer, got {dim!r}")
        if measure not in ("inner", "cosine"):
            raise ValueError(f"score.projection.measure must be inner or cosine, got {measure!r}")
        self.dim, self.measure, self.seed, self.pack_length = dim, measure, seed, pack_length
        self.parameters = parameters if isinstance(parameters, str) else list(parameters)
        self._losses: PairLosses | None = None
        self._names: list[str] = []
        self._sketch: CountSketch | None = None
        self._validation: Tensor | None = None

    def prepare(self, context: ScoringContext) -> None:
        from prefalign.inrun.ghost import select_parameters

        model = context.policy
        if self.parameters == "linear":
            chosen = linear_parameters(model)
        else:
            chosen = list(select_parameters(model, self.parameters, "score.projection.parameters"))
        self._losses = PairLosses(model, context.loss, dataclasses.replace(context.logp_settings, pack_length=self.pack_length))
        self._losses.eval()
        named = dict(self._losses.named_parameters())
        self._names = ["module.policy." + name for name in chosen]
        seed = context.seed if self.seed is None else self.seed
        self._sketch = CountSketch({name: named[name].shape for name in self._names}, self.dim, seed=seed)
        rows = [
            projected_gradients(self._losses, move_to(batch, context.device), self._names, self._sketch)
            for batch in distributed.share_batches(context.datamodule.eval_loader("val"), "projected validation gradients")
        ]
        self._validation = torch.cat(distributed.gather_shares(rows))
        log.info("projection: %d validation gradients over %d tensors, projected to %d", len(self._validation),
                 len(self._names), self.dim)

    def score_batch(self, context: ScoringContext, batch: dict[str, Any], shared: dict[str, Tensor]) -> Tensor:
        assert self._losses is not None and self._sketch is not None and self._validation is not None
        projected = projected_gradients(self._losses, batch, self._names, self._sketch)
        if self.measure == "inner":
            return projected @ self._validation.mean(0)
        return (F.normalize(projected, dim=1) @ F.normalize(self._validation, dim=1).T).mean(1)

    def release(self) -> None:
        self._losses, self._sketch, self._validation = None, None, None
