"""Evaluation metrics with bootstrap confidence intervals.

* **Single**: the mean 1-10 judge score of the policy's answers (and of the baseline's).
* **WinRate**: the share of prompts on which the judge prefers the policy's answer to the baseline's, ties
  counting half (the papers' "WinRate against the SFT model"), in percent.
* **Length-controlled win rate**, one of two, chosen by the benchmark's ``length_control`` (``conf/bench``) and
  reported under its own key, so that the approximation is never read as AlpacaEval's:

  - ``lc_winrate``, AlpacaEval 2's (:class:`AlpacaEvalLengthControl`, ``bench=alpaca_eval``): computed by the
    ``alpaca-eval`` package itself (``alpaca_eval.metrics.get_length_controlled_winrate``), whose GLM
    ``tanh(std_delta_len) + instruction_difficulty + not_gamed_baseline - 1`` has a per-instruction difficulty
    shipped with AlpacaEval (``df_gamed.csv`` of the hub dataset ``tatsu-lab/alpaca_eval``); lengths in
    characters. The package's version and GLM name are recorded with the value.
  - ``lc_winrate_approx``, prefalign's approximation (:class:`ApproximateLengthControl`, every other benchmark,
    which has no difficulty term): a logistic regression of the outcome on the standardised length difference
    in tokens, ``P(win) = sigmoid(theta + phi * tanh((len_p - len_b) / s))`` with ``s`` the standard deviation
    of the length differences, fitted by maximum likelihood (ties are targets of 0.5); the length-controlled
    win rate is ``sigmoid(theta)``, the predicted win rate at equal lengths (:func:`length_controlled_win_rate`).

  ``eval.json`` files written before the split hold the approximation under ``lc_winrate`` with no ``method``;
  :func:`reported_length_control` reads both.
* Every metric comes with a percentile bootstrap 95% interval over prompts and the number of items.
* **Paired differences** (:func:`paired_difference`): two policies measured on the same items (same prompts,
  same held-out pairs, same sampling seeds) differ by ``mean(a_i - b_i)``; resampling the items jointly gives an
  interval that is free of the between-item variance both share, much narrower than two separate intervals.
"""

from __future__ import annotations

import importlib.metadata
import logging
import math
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:  # pandas is imported where a frame is built: the other metrics do without it
    import pandas as pd

log = logging.getLogger(__name__)


def bootstrap(
    values: Sequence[float],
    statistic: Callable[[np.ndarray], float] = np.mean,
    resamples: int = 1000,
    seed: int = 0,
) -> dict[str, Any]:
    """``statistic`` of ``values`` with a percentile bootstrap 95% interval (over items)."""
    data = np.asarray(values, dtype=np.float64)
    if len(data) == 0:
        return {"value": math.nan, "ci_low": math.nan, "ci_high": math.nan, "n": 0}
    rng = np.random.default_rng(seed)
    estimates = [statistic(data[rng.integers(0, len(data), len(data))]) for _ in range(resamples)]
    low, high = np.percentile(estimates, [2.5, 97.5])
    return {"value": float(statistic(data)), "ci_low": float(low), "ci_high": float(high), "n": int(len(data))}


def paired_difference(
    first: Sequence[float], second: Sequence[float], resamples: int = 1000, seed: int = 0
) -> dict[str, Any]:
    """``mean(first_i - second_i)`` over items measured for both, with a paired percentile bootstrap 95% interval
    (the items resampled jointly), the two means, and how many items each side wins.

    Raises:
        ValueError: when the two lists do not have one value per item each (same length).
    """
    a, b = np.asarray(first, dtype=np.float64), np.asarray(second, dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"a paired difference needs one value per item on both sides, got {len(a)} and {len(b)}")
    result = bootstrap(a - b, resamples=resamples, seed=seed)
    result.update({"first": float(a.mean()) if len(a) else math.nan, "second": float(b.mean()) if len(b) else math.nan,
                   "first_better": int((a > b).sum()), "second_better": int((a < b).sum())})
    return result


def two_way_bootstrap(matrix: Any, resamples: int = 1000, seed: int = 0) -> dict[str, Any]:
    """The mean of a ``(seeds, items)`` matrix with a percentile bootstrap 95% interval that resamples both the
    training seeds and the items (a hierarchical bootstrap: seeds with replacement, then items with replacement;
    one draw of items serves every drawn seed, since every seed is measured on the same items). With one seed it
    is :func:`bootstrap` over the items, draw for draw.

    The interval covers the variance of the training run as well as the items': what two methods need before a
    difference between them can be read.
    """
    data = np.asarray(matrix, dtype=np.float64)
    data = data[None, :] if data.ndim == 1 else data
    seeds, items = data.shape
    if seeds == 1:
        return {**bootstrap(data[0], resamples=resamples, seed=seed), "seeds": 1}
    if items == 0:
        return {"value": math.nan, "ci_low": math.nan, "ci_high": math.nan, "n": 0, "seeds": seeds}
    rng = np.random.default_rng(seed)
    estimates = [data[np.ix_(rng.integers(0, seeds, seeds), rng.integers(0, items, items))].mean() for _ in range(resamples)]
    low, high = np.percentile(estimates, [2.5, 97.5])
    return {"value": float(data.mean()), "ci_low": float(low), "ci_high": float(high), "n": int(items), "seeds": int(seeds)}


def hierarchical_paired_difference(first: Any, second: Any, resamples: int = 1000, seed: int = 0) -> dict[str, Any]:
    """``mean(first - second)`` over ``(seeds, items)`` matrices measured on the same seeds and items, with the
    interval of :func:`two_way_bootstrap` (seeds and items drawn once for both sides: the pairing is kept on both
    levels), the two means, and how many items each side wins on its mean over the seeds. With one seed it is
    :func:`paired_difference`.

    Raises:
        ValueError: the two matrices do not have the same shape.
    """
    a, b = np.asarray(first, dtype=np.float64), np.asarray(second, dtype=np.float64)
    a, b = (a[None, :] if a.ndim == 1 else a), (b[None, :] if b.ndim == 1 else b)
    if a.shape != b.shape:
        raise ValueError(f"a paired difference needs the same seeds and items on both sides, got {a.shape} and {b.shape}")
    if a.shape[0] == 1:
        return {**paired_difference(a[0], b[0], resamples=resamples, seed=seed), "seeds": 1}
    result = two_way_bootstrap(a - b, resamples=resamples, seed=seed)
    per_item_a, per_item_b = a.mean(0), b.mean(0)
    result.update({"first": float(a.mean()), "second": float(b.mean()),
                   "first_better": int((per_item_a > per_item_b).sum()), "second_better": int((per_item_a < per_item_b).sum())})
    return result


def variance_components(differences: Any) -> dict[str, float]:
    """The two sources of noise in a paired comparison over seeds and items, by the method of moments.

    For a ``(seeds, items)`` matrix ``d`` of paired differences (method minus baseline, the same items and seeds
    on both sides): ``sd_item``, the standard deviation of an item's difference around its seed's mean (pooled over
    seeds, ``ddof=1`` per seed), and ``sd_seed``, the standard deviation of the per-seed mean difference beyond what
    the items explain: ``var(mean_s) = sd_seed^2 + sd_item^2 / items``, so ``sd_seed^2 = var(mean_s) - sd_item^2 /
    items``, floored at 0 (one seed: ``nan``, nothing to separate).

    Raises:
        ValueError: fewer than two items.
    """
    d = np.asarray(differences, dtype=np.float64)
    d = d[None, :] if d.ndim == 1 else d
    seeds, items = d.shape
    if items < 2:
        raise ValueError(f"variance components need at least two items, got {items}")
    means = d.mean(1)
    item_var = float(((d - means[:, None]) ** 2).sum() / (seeds * (items - 1)))
    seed_var = float(np.var(means, ddof=1) - item_var / items) if seeds > 1 else float("nan")
    return {"sd_item": math.sqrt(item_var), "sd_seed": math.sqrt(max(seed_var, 0.0)) if seeds > 1 else float("nan"),
            "seeds": seeds, "items": items}


def minimum_detectable_difference(
    sd_item: float, items: int, sd_seed: float, seeds: int, alpha: float = 0.05, power: float = 0.8
) -> float:
    """The smallest true paired difference a design resolves: a two-sided test at level ``alpha`` rejects "no
    difference" with probability ``power`` (normal approximation):

        MDD = (z_{1 - alpha/2} + z_{power}) * sqrt(sd_item^2 / (items * seeds) + sd_seed^2 / seeds)

    (the variance of the mean over ``seeds`` training runs of the mean over ``items`` paired items, with the
    components of :func:`variance_components`). More items shrink the first term only; the seed term shrinks
    only with seeds, which is why one training run cannot resolve differences of the size of its run-to-run
    spread however many test prompts it is judged on.
    """
    from statistics import NormalDist

    if items < 1 or seeds < 1:
        raise ValueError(f"a design needs at least one item and one seed, got items={items}, seeds={seeds}")
    z = NormalDist().inv_cdf(1 - alpha / 2) + NormalDist().inv_cdf(power)
    return z * math.sqrt(sd_item**2 / (items * seeds) + sd_seed**2 / seeds)


def mean_of_known(values: Sequence[float | None]) -> float | None:
    """The mean of the values that are not ``None`` (unparsable judge replies), or ``None`` if none is known."""
    known = [v for v in values if v is not None]
    return float(np.mean(known)) if known else None


def win_rate(outcomes: Sequence[float | None], resamples: int = 1000, seed: int = 0) -> dict[str, Any]:
    """Win rate in percent (ties half) over the parsable outcomes, with counts and a bootstrap interval."""
    parsable = [o for o in outcomes if o is not None]
    result = bootstrap([100 * o for o in parsable], resamples=resamples, seed=seed)
    result.update(
        {
            "wins": int(sum(o > 0.5 for o in parsable)),
            "ties": int(sum(o == 0.5 for o in parsable)),
            "losses": int(sum(o < 0.5 for o in parsable)),
            "unparsable": len(outcomes) - len(parsable),
        }
    )
    return result


def _fit_length_model(outcomes: np.ndarray, features: np.ndarray, iterations: int = 50) -> tuple[float, float]:
    """Maximum-likelihood ``(theta, phi)`` of ``P = sigmoid(theta + phi * x)`` by Newton's method, with a tiny
    ridge penalty so that separable data keeps finite estimates."""
    design = np.stack([np.ones_like(features), features], axis=1)
    weights = np.zeros(2)
    ridge = 1e-3
    for _ in range(iterations):
        logits = design @ weights
        probabilities = 1 / (1 + np.exp(-logits))
        gradient = design.T @ (outcomes - probabilities) - ridge * weights
        hessian = -(design.T * (probabilities * (1 - probabilities))) @ design - ridge * np.eye(2)
        step = np.linalg.solve(hessian, gradient)
        weights = weights - step
        if np.abs(step).max() < 1e-10:
            break
    return float(weights[0]), float(weights[1])


def length_controlled_win_rate(
    outcomes: Sequence[float | None],
    policy_lengths: Sequence[float],
    baseline_lengths: Sequence[float],
    resamples: int = 200,
    seed: int = 0,
) -> dict[str, Any]:
    """prefalign's approximation of a length-controlled win rate in percent (module docstring: token lengths, no
    difficulty term), with a bootstrap interval; reported as ``lc_winrate_approx``, never as AlpacaEval's."""
    keep = [i for i, o in enumerate(outcomes) if o is not None]
    if len(keep) < 2:
        return {"value": math.nan, "ci_low": math.nan, "ci_high": math.nan, "n": len(keep), "length_coefficient": math.nan}
    y = np.array([outcomes[i] for i in keep], dtype=np.float64)
    difference = np.array([policy_lengths[i] - baseline_lengths[i] for i in keep], dtype=np.float64)
    scale = difference.std() or 1.0
    x = np.tanh(difference / scale)

    def statistic(indices: np.ndarray) -> float:
        theta, _ = _fit_length_model(y[indices], x[indices])
        return 100 / (1 + math.exp(-theta))

    everything = np.arange(len(y))
    theta, phi = _fit_length_model(y, x)
    rng = np.random.default_rng(seed)
    estimates = [statistic(rng.integers(0, len(y), len(y))) for _ in range(resamples)]
    low, high = np.percentile(estimates, [2.5, 97.5])
    return {
        "value": statistic(everything),
        "ci_low": float(low),
        "ci_high": float(high),
        "n": len(y),
        "length_coefficient": phi,
    }


# eval.json keys of the two length-controlled win rates (module docstring): distinct, so that a reader never takes
# prefalign's approximation for AlpacaEval's
LC_KEY = "lc_winrate"
LC_APPROX_KEY = "lc_winrate_approx"
LC_APPROX_LABEL = "length-controlled WinRate (prefalign's approximation: token lengths, no difficulty term)"

# where alpaca-eval's GLM reads its per-instruction difficulty (and the gamed baselines it regularises towards):
# alpaca_eval/metrics/glm_winrate.py, _get_featurized_data (instruction_difficulty.csv is read only when predicting
# against another baseline's saved weights, which prefalign does not do)
ALPACA_EVAL_HUB_REPO = "tatsu-lab/alpaca_eval"
ALPACA_EVAL_DIFFICULTY_FILE = "df_gamed.csv"
ALPACA_EVAL_PROMPTS = 805
# the generator names in the annotations frame: alpaca-eval compares generator_2 (the model) with generator_1
ALPACA_EVAL_BASELINE, ALPACA_EVAL_POLICY = "baseline", "policy"


class LengthControlUnavailable(RuntimeError):
    """AlpacaEval's length-controlled win rate cannot be computed here (package or hub file missing)."""


@dataclass(frozen=True)
class JudgedAnswers:
    """What a length control sees of an evaluation, one entry per prompt in the benchmark's order.

    Attributes:
        outcomes: the judge's outcome for the policy (1 win, 0.5 tie, 0 loss; ``None`` unparsable).
        policy_answers, baseline_answers: the answers' texts.
        policy_tokens, baseline_tokens: the answers' lengths in tokens of the policy's tokenizer.
    """

    outcomes: Sequence[float | None]
    policy_answers: Sequence[str]
    baseline_answers: Sequence[str]
    policy_tokens: Sequence[int]
    baseline_tokens: Sequence[int]


class LengthControl:
    """A length-controlled win rate of judged answers, chosen by the benchmark (``bench.length_control``)."""

    def prepare(self) -> None:
        """Check, before anything is generated, that the win rate can be computed (here: nothing to check)."""

    def __call__(self, answers: JudgedAnswers, seed: int = 0) -> dict[str, dict[str, Any]]:
        """``{eval.json key: metric}``: the value in percent, its 95% interval, ``n``, and what computed it."""
        raise NotImplementedError


class ApproximateLengthControl(LengthControl):
    """prefalign's approximation (:func:`length_controlled_win_rate`), for benchmarks with no difficulty term.

    Args:
        resamples: bootstrap resamples of the interval.
    """

    def __init__(self, resamples: int = 200) -> None:
        self.resamples = resamples

    def __call__(self, answers: JudgedAnswers, seed: int = 0) -> dict[str, dict[str, Any]]:
        metric = length_controlled_win_rate(
            answers.outcomes, answers.policy_tokens, answers.baseline_tokens, resamples=self.resamples, seed=seed
        )
        return {LC_APPROX_KEY: {**metric, "method": "prefalign_approximation", "label": LC_APPROX_LABEL, "lengths": "tokens"}}


def _glm_module() -> Any:
    """``alpaca_eval.metrics.glm_winrate``, imported on first use: only ``bench=alpaca_eval`` needs the package."""
    try:
        from alpaca_eval.metrics import glm_winrate
    except ImportError as error:
        raise LengthControlUnavailable(
            "AlpacaEval 2's length-controlled win rate is computed by the alpaca-eval package, which cannot be "
            f"imported ({error}): pip install -e '.[eval]' (alpaca-eval and setuptools<81, which it imports "
            "pkg_resources from), or set bench.length_control.fallback_to_approximation=true to report prefalign's "
            f"approximation ({LC_APPROX_KEY}) instead"
        ) from error
    return glm_winrate


def alpaca_eval_difficulty_file() -> str:
    """The local path of alpaca-eval's ``df_gamed.csv``, fetched from the hub the way the package fetches it (same
    repository, token and cache), so that the package's own call then reads the cached copy.

    Raises:
        LengthControlUnavailable: the package is missing, or the file is neither in the hub cache nor reachable.
    """
    _glm_module()
    from alpaca_eval import constants
    from huggingface_hub import hf_hub_download

    try:
        return hf_hub_download(
            repo_id=ALPACA_EVAL_HUB_REPO,
            filename=ALPACA_EVAL_DIFFICULTY_FILE,
            repo_type="dataset",
            token=constants.DATASETS_TOKEN,
            force_download=constants.DATASETS_FORCE_DOWNLOAD,
            cache_dir=constants.DEFAULT_CACHE_DIR,
        )
    except Exception as error:  # offline, not cached, denied: whatever the cause, the file is not there
        raise LengthControlUnavailable(
            f"AlpacaEval 2's length-controlled win rate needs {ALPACA_EVAL_DIFFICULTY_FILE} (the per-instruction "
            f"difficulty of its GLM) from the Hugging Face dataset {ALPACA_EVAL_HUB_REPO}, which could not be "
            f"obtained ({type(error).__name__}: {error}). Where the hub is reachable, fetch it once with "
            f"`hf download {ALPACA_EVAL_HUB_REPO} {ALPACA_EVAL_DIFFICULTY_FILE} --repo-type dataset`, then copy the "
            "hub cache (HF_HUB_CACHE, default ~/.cache/huggingface/hub) to this machine and set HF_HUB_OFFLINE=1; "
            "or set bench.length_control.fallback_to_approximation=true to report prefalign's approximation "
            f"({LC_APPROX_KEY}) instead"
        ) from error


def alpaca_eval_annotations(
    outcomes: Sequence[float | None], policy_answers: Sequence[str], baseline_answers: Sequence[str]
) -> pd.DataFrame:
    """The annotations frame alpaca-eval's metrics read, one row per parsable outcome.

    Columns as ``get_length_controlled_winrate`` expects them: ``index`` (the prompt's position in AlpacaEval's
    805-prompt file, which the benchmark loads in order, so its position in ``outcomes``; the key of the
    difficulty table), ``output_1`` / ``generator_1`` the baseline and ``output_2`` / ``generator_2`` the policy
    (the package measures their lengths itself, in characters), and ``preference`` on alpaca-eval's scale: 1 the
    baseline wins, 2 the policy wins, 1.5 a tie, so ``1 + outcome``. Unparsable outcomes are left out, as from
    the WinRate, so both are over the same prompts.

    Raises:
        ValueError: the lists differ in length, there are more prompts than AlpacaEval's, or an answer is not text.
    """
    import pandas as pd

    if not len(outcomes) == len(policy_answers) == len(baseline_answers):
        raise ValueError(
            f"one outcome and two answers per prompt are needed, got {len(outcomes)} outcomes, {len(policy_answers)} "
            f"policy and {len(baseline_answers)} baseline answers"
        )
    if len(outcomes) > ALPACA_EVAL_PROMPTS:
        raise ValueError(
            f"AlpacaEval has {ALPACA_EVAL_PROMPTS} prompts, got {len(outcomes)}: its length-controlled win rate "
            "keys the difficulty by the prompt's position, so bench.path must hold AlpacaEval's prompts in its order"
        )
    rows = []
    for index, (outcome, policy, baseline) in enumerate(zip(outcomes, policy_answers, baseline_answers)):
        if outcome is None:
            continue
        if not isinstance(policy, str) or not isinstance(baseline, str):
            raise ValueError(f"prompt {index}: AlpacaEval's length control measures text answers, got "
                             f"{type(policy).__name__} and {type(baseline).__name__}")
        rows.append({"index": index, "output_1": baseline, "output_2": policy, "generator_1": ALPACA_EVAL_BASELINE,
                     "generator_2": ALPACA_EVAL_POLICY, "preference": 1.0 + float(outcome)})
    columns = ["index", "output_1", "output_2", "generator_1", "generator_2", "preference"]
    return pd.DataFrame(rows, columns=columns)


def alpaca_eval_length_controlled_win_rate(
    annotations: pd.DataFrame, glm_name: str = "length_controlled_v1", resamples: int = 200, seed: int = 0
) -> dict[str, Any]:
    """AlpacaEval 2's length-controlled win rate of :func:`alpaca_eval_annotations`, computed by the package.

    The value, standard error and raw win rate are ``get_length_controlled_winrate``'s; the 95% interval is a
    percentile bootstrap over prompts (the package's GLM refitted on each resample, about 0.3 s at 805 prompts),
    as for every other metric here. ``glm_weights`` are the fitted coefficients (the one of ``tanh(std_delta_len)``
    says how much the judge rewards length; ``std_delta_len`` is baseline minus policy length).

    Args:
        annotations: the frame of :func:`alpaca_eval_annotations`.
        glm_name: one of alpaca-eval's GLMs (``GLM_INFO``); ``length_controlled_v1`` is AlpacaEval 2's.
        resamples: bootstrap resamples (0: no interval).
        seed: bootstrap seed.
    """
    glm = _glm_module()
    version = importlib.metadata.version("alpaca_eval")
    import sklearn

    result: dict[str, Any] = {
        "value": math.nan, "ci_low": math.nan, "ci_high": math.nan, "n": len(annotations),
        "method": "alpaca_eval",
        "label": f"length-controlled WinRate (AlpacaEval 2: alpaca-eval {version}, GLM {glm_name})",
        "package": "alpaca-eval", "version": version, "glm_name": glm_name, "sklearn_version": sklearn.__version__,
        "lengths": "characters",
    }
    if len(annotations) < 2:
        return result

    def fit(frame: pd.DataFrame, weights_dir: str | None = None, warn: bool = False) -> dict[str, Any]:
        return glm.get_length_controlled_winrate(
            frame.reset_index(drop=True), glm_name=glm_name, save_weights_dir=weights_dir,
            is_add_glm_preference_inplace=False, is_warn_extreme_changes=warn,
        )

    # the package writes the fitted weights only to a file (never into site-packages: save_weights_dir="auto")
    with tempfile.TemporaryDirectory(prefix="alpaca-eval-glm-") as weights_dir:
        metrics = fit(annotations, weights_dir, warn=True)
        weights_file = Path(weights_dir) / glm_name / f"baseline_{ALPACA_EVAL_BASELINE}.csv"
        weights = _read_glm_weights(weights_file)
    rng = np.random.default_rng(seed)
    estimates = [
        float(fit(annotations.iloc[rng.integers(0, len(annotations), len(annotations))])["length_controlled_winrate"])
        for _ in range(resamples)
    ]
    low, high = np.percentile(estimates, [2.5, 97.5]) if estimates else (math.nan, math.nan)
    result.update({
        "value": float(metrics["length_controlled_winrate"]),
        "ci_low": float(low),
        "ci_high": float(high),
        "standard_error": float(metrics["lc_standard_error"]),
        "win_rate": float(metrics["win_rate"]),
        "glm_weights": weights,
        "mean_length_chars": {
            "policy": float(annotations["output_2"].str.len().mean()),
            "baseline": float(annotations["output_1"].str.len().mean()),
        },
    })
    return result


def _read_glm_weights(path: Path) -> dict[str, float] | None:
    """The policy's row of the weights file the package saved, or ``None`` if this version saved none there."""
    if not path.exists():
        log.warning("alpaca-eval wrote no GLM weights to %s: eval.json's glm_weights is null", path)
        return None
    import pandas as pd

    return {name: float(value) for name, value in pd.read_csv(path, index_col=0).loc[ALPACA_EVAL_POLICY].items()}


class AlpacaEvalLengthControl(LengthControl):
    """AlpacaEval 2's length-controlled win rate, computed by the ``alpaca-eval`` package (``bench=alpaca_eval``).

    Reported as ``lc_winrate`` with the package's version and GLM name. When the package or its difficulty table
    (``df_gamed.csv`` from the hub) is missing, :meth:`prepare` fails before anything is generated, naming the
    file and how to provide it, unless ``fallback_to_approximation`` is set: then prefalign's approximation is
    reported, under its own key ``lc_winrate_approx`` with the reason.

    Args:
        glm_name: one of alpaca-eval's GLMs; ``length_controlled_v1`` is AlpacaEval 2's leaderboard's.
        resamples: bootstrap resamples of the interval (each refits the GLM).
        fallback_to_approximation: report the approximation instead of failing when the package's cannot be had.
    """

    def __init__(self, glm_name: str = "length_controlled_v1", resamples: int = 200,
                 fallback_to_approximation: bool = False) -> None:
        self.glm_name, self.resamples = glm_name, resamples
        self.fallback_to_approximation = fallback_to_approximation
        self.unavailable: str | None = None  # why the package's win rate cannot be had, once prepare() fell back
        self.prepared = False

    def prepare(self) -> None:
        """Check the package, the GLM name and the hub file (fetched into the hub cache if reachable).

        Raises:
            LengthControlUnavailable: the package or the file is missing and no fallback was asked for.
            ValueError: ``glm_name`` is not one of the package's GLMs.
        """
        try:
            glm = _glm_module()
            if self.glm_name not in glm.GLM_INFO:
                raise ValueError(f"bench.length_control.glm_name={self.glm_name!r} is not one of alpaca-eval's GLMs: "
                                 f"{', '.join(glm.GLM_INFO)}")
            alpaca_eval_difficulty_file()
            self.unavailable = None
        except LengthControlUnavailable as error:
            if not self.fallback_to_approximation:
                raise
            log.warning("%s; falling back to prefalign's approximation (%s), as asked", error, LC_APPROX_KEY)
            self.unavailable = str(error)
        self.prepared = True

    def __call__(self, answers: JudgedAnswers, seed: int = 0) -> dict[str, dict[str, Any]]:
        if not self.prepared:  # a direct call, not through the evaluation (which prepares before generating)
            self.prepare()
        if self.unavailable is not None:
            fallback = ApproximateLengthControl(self.resamples)(answers, seed)
            fallback[LC_APPROX_KEY]["fallback_from_alpaca_eval"] = self.unavailable
            return fallback
        annotations = alpaca_eval_annotations(answers.outcomes, answers.policy_answers, answers.baseline_answers)
        return {LC_KEY: alpaca_eval_length_controlled_win_rate(annotations, self.glm_name, self.resamples, seed)}


def reported_length_control(result: dict[str, Any]) -> tuple[str, dict[str, Any]] | None:
    """``(label, metric)`` of the length-controlled win rate an ``eval.json`` reports, or ``None`` if none.

    Reads files of both layouts: ``lc_winrate`` with ``method: alpaca_eval`` (the package's) or
    ``lc_winrate_approx`` (prefalign's approximation), and the earlier files whose ``lc_winrate`` has no
    ``method``, which always held the approximation.
    """
    if LC_KEY in result:
        metric = result[LC_KEY]
        if metric.get("method") == "alpaca_eval":
            return metric["label"], metric
        return LC_APPROX_LABEL, metric
    if LC_APPROX_KEY in result:
        return result[LC_APPROX_KEY].get("label", LC_APPROX_LABEL), result[LC_APPROX_KEY]
    return None
