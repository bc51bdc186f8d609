"""Comparing selectors: overlap with TIF, score correlations, noise detection, and plots.

* **Overlap coefficient** (TIF paper, "Overlap Coefficient" table): ``|A ∩ B| / min(|A|, |B|)`` between the
  kept sets of two selections; the paper compares LossDiff, IRM and LossDiff-IRM against exact TIF.
* **Correlations**: Pearson and Spearman between every pair of score columns.
* **Noise**: on data with known noise (metadata ``label_flipped`` / ``ambiguous``, e.g. the built-in set), how
  many flipped and ambiguous pairs each selection keeps, against the base rate a random selection keeps in
  expectation. Only this analysis reads the ground truth; no rule does.
* **Noise detection**, threshold-free: for every score, the AUROC and the AUPRC (average precision) of the score
  as a detector of the flipped and of the ambiguous pairs, with bootstrap intervals over pairs, and ROC curves.
* **Linear datamodeling score** (LDS; TRAK, Park et al., ICML 2023): how well a score, summed over a subset of
  the pairs, ranks what training on that subset does, measured over many random subsets
  (:func:`linear_datamodeling_score`; the trainings: ``python -m bench.lds``).
* **Plots** (PNG): a histogram of each score, and the joint scatter of two scores (like Figure 1 of the BeeS
  paper), coloured by the ground-truth noise when it is known.

The reports name each score by the label its scorer recorded in the scores file (:func:`score_labels`); the CSV
and JSON files keep the column names.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from prefalign.selection.rules import Selection

log = logging.getLogger(__name__)

NOISE_COLUMNS = ("label_flipped", "ambiguous")


def score_labels(columns: Iterable[str], provenance: dict[str, Any]) -> dict[str, str]:
    """Each score column's name in reports: the label its scorer recorded in the scores file's provenance
    (:meth:`prefalign.scoring.base.Scorer.display_label`), else the column name (a file that records none)."""
    recorded = provenance.get("scorers") or {}
    return {column: (recorded.get(column) or {}).get("label") or column for column in columns if column != "pair_id"}


def overlap_coefficient(first: list[str] | set[str], second: list[str] | set[str]) -> float:
    """``|A ∩ B| / min(|A|, |B|)`` (1.0 when one set contains the other; 0.0 when either is empty)."""
    a, b = set(first), set(second)
    if not a or not b:
        return 0.0
    return len(a & b) / min(len(a), len(b))


def overlap_table(selections: dict[str, Selection]) -> pd.DataFrame:
    """Pairwise overlap coefficients of all selections (a symmetric matrix)."""
    names = list(selections)
    matrix = pd.DataFrame(index=names, columns=names, dtype=float)
    for a, b in itertools.product(names, names):
        matrix.loc[a, b] = overlap_coefficient(selections[a].kept, selections[b].kept)
    return matrix


def spearman(first: pd.Series, second: pd.Series) -> float:
    """Spearman's rank correlation: Pearson on average ranks (ties share their mean rank), as
    ``scipy.stats.spearmanr`` computes it, without needing SciPy (pandas' ``method="spearman"`` imports it).
    Rows where either value is missing are dropped first."""
    both = pd.concat([first.rename("a"), second.rename("b")], axis=1).dropna()
    return both["a"].rank().corr(both["b"].rank(), method="pearson")


def correlation_table(scores: pd.DataFrame) -> pd.DataFrame:
    """Pearson and Spearman correlation of every pair of score columns."""
    columns = [c for c in scores.columns if c != "pair_id" and scores[c].nunique() > 1]
    rows = []
    for a, b in itertools.combinations(columns, 2):
        rows.append(
            {
                "score_a": a,
                "score_b": b,
                "pearson": scores[a].corr(scores[b], method="pearson"),
                "spearman": spearman(scores[a], scores[b]),
            }
        )
    return pd.DataFrame(rows, columns=["score_a", "score_b", "pearson", "spearman"])


def noise_table(selections: dict[str, Selection], truth: pd.DataFrame) -> pd.DataFrame:
    """Flipped and ambiguous pairs kept by each selection, against the base rate.

    Args:
        selections: name -> selection.
        truth: ``pair_id`` plus boolean ``label_flipped`` / ``ambiguous`` columns (from the data's metadata).
    """
    truth = truth.set_index("pair_id")
    rows = []
    base = {column: float(truth[column].mean()) for column in NOISE_COLUMNS if column in truth}
    for name, selection in selections.items():
        kept = truth.loc[[pid for pid in selection.kept if pid in truth.index]]
        row: dict[str, Any] = {"selection": name, "kept": len(kept), "kept_fraction": selection.kept_fraction}
        for column in base:
            count = int(kept[column].sum())
            row[f"{column}_kept"] = count
            row[f"{column}_rate"] = count / len(kept) if len(kept) else float("nan")
            row[f"{column}_base_rate"] = base[column]
            # share of all such pairs that the selection removed (random removes 1 - kept_fraction of them)
            total = int(truth[column].sum())
            row[f"{column}_removed"] = 1 - count / total if total else float("nan")
        rows.append(row)
    return pd.DataFrame(rows)


def _binned(values: np.ndarray) -> tuple[np.ndarray, int]:
    """Each pair's bin (the rank of its value among the distinct values, ascending) and the number of bins."""
    distinct, bins = np.unique(values, return_inverse=True)
    return bins.reshape(-1), len(distinct)


def _per_bin(weights: np.ndarray, bins: np.ndarray, size: int) -> np.ndarray:
    """``(resamples, pairs)`` weights summed per bin: ``(resamples, size)``."""
    rows = np.arange(weights.shape[0])[:, None] * size
    return np.bincount((rows + bins[None, :]).ravel(), weights.ravel(), minlength=weights.shape[0] * size).reshape(-1, size)


def _auroc_ap(pos: np.ndarray, neg: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """AUROC and average precision from positive and negative counts per distinct value, ``(..., bins)`` in
    ascending order of value, higher values flagging the positives; ties count half in the AUROC and as one
    threshold in the average precision (as ``sklearn.metrics.roc_auc_score`` / ``average_precision_score``)."""
    total_pos, total_neg = pos.sum(-1), neg.sum(-1)
    below = np.cumsum(neg, -1) - neg  # negatives strictly below each value
    auroc = (pos * (below + 0.5 * neg)).sum(-1) / (total_pos * total_neg)
    # thresholds from the highest value down: precision at each, weighted by the recall it adds
    tp, fp = np.cumsum(pos[..., ::-1], -1), np.cumsum(neg[..., ::-1], -1)
    with np.errstate(invalid="ignore", divide="ignore"):
        precision = np.where(tp + fp > 0, tp / (tp + fp), 0.0)
    ap = (pos[..., ::-1] * precision).sum(-1) / total_pos
    return auroc, ap


def detection_metrics(values: np.ndarray, positive: np.ndarray) -> dict[str, float]:
    """AUROC and average precision (AUPRC) of ``values`` as a detector of ``positive`` (higher flags it).

    AUROC = P(value of a positive > value of a negative) + P(equal) / 2 (the Mann-Whitney statistic; 0.5 is
    chance, below 0.5 the low end flags the positives). AUPRC = sum over thresholds of precision times the
    recall added; chance is the positives' share.
    """
    values, positive = np.asarray(values, dtype=float), np.asarray(positive, dtype=bool)
    bins, size = _binned(values)
    pos = np.bincount(bins[positive], minlength=size).astype(float)
    neg = np.bincount(bins[~positive], minlength=size).astype(float)
    auroc, ap = _auroc_ap(pos, neg)
    return {"auroc": float(auroc), "auprc": float(ap)}


def _detector(scores: pd.DataFrame, column: str, truth: pd.DataFrame, target: str) -> tuple[np.ndarray, np.ndarray] | None:
    """A score's values and the ``target`` flag of the pairs that have both (``truth`` indexed by ``pair_id``), or
    ``None`` when there is nothing to detect (no positive, no negative, or a constant score)."""
    frame = scores[["pair_id", column]].dropna()
    frame = frame[frame["pair_id"].isin(truth.index)]
    values = frame[column].to_numpy(dtype=float)
    positive = truth.loc[frame["pair_id"], target].to_numpy(dtype=bool)
    if not positive.any() or positive.all() or len(np.unique(values)) < 2:
        return None
    return values, positive


def detection_table(
    scores: pd.DataFrame, truth: pd.DataFrame, resamples: int = 1000, seed: int = 0, level: float = 0.95
) -> pd.DataFrame:
    """Every score as a detector of the flipped and of the ambiguous pairs: AUROC and AUPRC, each with a
    percentile bootstrap interval over pairs (``resamples`` resamples of the scored pairs with replacement).

    A score says nothing of which end flags noise, so the AUROC is reported as it is (higher values flagging:
    below 0.5, the low end flags) and ``flagging_end`` names the end it points to; the AUPRC is that end's (for
    ``low``, of the negated score), with ``chance_auprc`` (the positives' share) to read it against. Pairs
    without a value of a score (NaN) are left out of its rows.
    """
    truth = truth.set_index("pair_id")
    rng = np.random.default_rng(seed)
    alpha = (1 - level) / 2
    rows = []
    for column in [c for c in scores.columns if c != "pair_id"]:
        ids = scores[["pair_id", column]].dropna()["pair_id"]
        ids = ids[ids.isin(truth.index)]
        n = len(ids)
        # each resample as counts per pair (one draw per score, shared by its targets), then per distinct value
        draws = rng.integers(0, n, size=(resamples, n)) if n else np.zeros((resamples, 0), dtype=int)
        weights = np.bincount((np.arange(resamples)[:, None] * n + draws).ravel(), minlength=resamples * n)
        weights = weights.reshape(resamples, n).astype(float)
        for target in [t for t in NOISE_COLUMNS if t in truth]:
            found = _detector(scores, column, truth, target)
            row: dict[str, Any] = {"score": column, "target": target, "pairs": n, "positives": int(truth.loc[ids, target].sum())}
            if found is None:
                rows.append({**row, "auroc": float("nan"), "auprc": float("nan")})
                continue
            values, positive = found
            raw_auroc = detection_metrics(values, positive)["auroc"]
            end = "high" if raw_auroc >= 0.5 else "low"
            bins, size = _binned(values if end == "high" else -values)
            point = _auroc_ap(np.bincount(bins[positive], minlength=size).astype(float),
                              np.bincount(bins[~positive], minlength=size).astype(float))
            pos = _per_bin(weights[:, positive], bins[positive], size)
            neg = _per_bin(weights[:, ~positive], bins[~positive], size)
            usable = (pos.sum(-1) > 0) & (neg.sum(-1) > 0)
            auroc, ap = _auroc_ap(pos[usable], neg[usable])
            auroc = auroc if end == "high" else 1 - auroc
            row.update(
                {
                    "auroc": raw_auroc,
                    "auroc_low": float(np.quantile(auroc, alpha)),
                    "auroc_high": float(np.quantile(auroc, 1 - alpha)),
                    "flagging_end": end,
                    "auprc": float(point[1]),
                    "auprc_low": float(np.quantile(ap, alpha)),
                    "auprc_high": float(np.quantile(ap, 1 - alpha)),
                    "chance_auprc": float(positive.mean()),
                }
            )
            rows.append(row)
    columns = ["score", "target", "pairs", "positives", "auroc", "auroc_low", "auroc_high", "flagging_end", "auprc",
               "auprc_low", "auprc_high", "chance_auprc"]
    return pd.DataFrame(rows).reindex(columns=columns)


def subset_predictions(scores: pd.DataFrame, subsets: list[list[str]]) -> pd.DataFrame:
    """Each score's prediction for each subset: the sum of its values over the subset's pairs (the additive
    model of a score, TRAK's ``g(S) = sum_{d in S} tau(d)``).

    Args:
        scores: ``pair_id`` and one column per score.
        subsets: the subsets, as lists of pair ids.

    Returns:
        One row per subset, one column per score.

    Raises:
        KeyError: a subset names a pair the scores do not have, or a score has no value for one of its pairs.
    """
    table = scores.set_index("pair_id")
    columns = [column for column in table.columns if pd.api.types.is_numeric_dtype(table[column])]
    rows = []
    for index, subset in enumerate(subsets):
        missing = [pair_id for pair_id in subset if pair_id not in table.index]
        if missing:
            raise KeyError(f"subset {index} holds pairs that are not in the scores: {missing[:5]}")
        part = table.loc[subset, columns]
        empty = [column for column in columns if part[column].isna().any()]
        if empty:
            raise KeyError(f"subset {index}: the scores {empty} have no value for some of its pairs")
        rows.append(part.sum())
    return pd.DataFrame(rows, columns=columns).reset_index(drop=True)


def linear_datamodeling_score(
    predicted: Any, measured: Any, resamples: int = 1000, seed: int = 0
) -> dict[str, float]:
    """LDS (TRAK, Park et al., ICML 2023, the linear datamodeling score of Sec. 2): Spearman's rank correlation,
    over ``M`` subsets ``S_j``, between a score's prediction ``g(S_j) = sum_{d in S_j} tau(d)`` and the measured
    outcome ``f(S_j)`` of a model trained on ``S_j``; with a percentile bootstrap 95% interval that resamples the
    subsets.

    The sign is kept: with ``measured`` an improvement (minus the validation loss, or the accuracy), a score whose
    high end marks good pairs has a positive LDS, one whose low end does a negative one of the same size
    (prefalign's IF is a loss decrease, so its LDS against minus the loss is positive when it predicts well).

    Args:
        predicted: ``(M,)`` predictions.
        measured: ``(M,)`` outcomes.
        resamples: bootstrap draws of the subsets.
        seed: the bootstrap's seed.

    Returns:
        ``lds``, ``ci_low``, ``ci_high`` and ``subsets`` (``M``).
    """
    predicted, measured = np.asarray(predicted, dtype=float), np.asarray(measured, dtype=float)
    if predicted.shape != measured.shape or predicted.ndim != 1:
        raise ValueError(f"predicted {predicted.shape} and measured {measured.shape} must be two vectors of one length")
    count = len(predicted)

    def rank_correlation(rows: np.ndarray) -> float:
        # a draw that repeats one subset has no ranking to correlate
        a, b = pd.Series(predicted[rows]), pd.Series(measured[rows])
        return float(spearman(a, b)) if a.nunique() > 1 and b.nunique() > 1 else float("nan")

    value = rank_correlation(np.arange(count))
    generator = np.random.default_rng(seed)
    draws = np.array([rank_correlation(generator.integers(0, count, count)) for _ in range(resamples)])
    draws = draws[~np.isnan(draws)]
    low, high = (np.percentile(draws, [2.5, 97.5]) if len(draws) else (float("nan"), float("nan")))
    return {"lds": value, "ci_low": float(low), "ci_high": float(high), "subsets": count}


def subset_percentile(value: float, random_values: Any) -> float:
    """Where a selected subset's measured outcome falls among the random subsets' (a rule that is not additive,
    a band, has no prediction to correlate): the share of random subsets below it, ties counted half."""
    random_values = np.asarray(random_values, dtype=float)
    return float(((random_values < value).sum() + 0.5 * (random_values == value).sum()) / len(random_values))


def plot_lds(table: pd.DataFrame, out_dir: Path) -> Path:
    """LDS of every score with its interval, one panel per measured target (``lds.png``).

    Args:
        table: rows with ``score`` (its label), ``target``, ``lds``, ``ci_low`` and ``ci_high``.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    targets = list(dict.fromkeys(table["target"]))
    figure, axes = plt.subplots(1, len(targets), figsize=(4.5 * len(targets), 0.45 * table["score"].nunique() + 1.8),
                                sharey=True, squeeze=False)
    for axis, target in zip(axes[0], targets):
        rows = table[table["target"] == target].reset_index(drop=True)
        positions = np.arange(len(rows))
        axis.errorbar(rows["lds"], positions, xerr=[rows["lds"] - rows["ci_low"], rows["ci_high"] - rows["lds"]],
                      fmt="o", capsize=3)
        axis.axvline(0, color="grey", lw=0.8)
        axis.set_yticks(positions, rows["score"])
        axis.set_xlim(-1.05, 1.05)
        axis.set_xlabel("LDS (Spearman, 95% interval)")
        axis.set_title(target)
    axes[0][0].invert_yaxis()
    return _save(figure, Path(out_dir) / "lds.png")


def _save(figure: Any, path: Path) -> Path:
    """A figure laid out, written as PNG and closed."""
    import matplotlib.pyplot as plt

    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return path


def plot_roc(scores: pd.DataFrame, truth: pd.DataFrame, out_dir: Path, labels: dict[str, str] | None = None) -> list[Path]:
    """ROC curves of every score as a detector of each noise kind (``roc_<target>.png``), each score taken from
    its flagging end (:func:`detection_table`)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = labels or {}
    out_dir.mkdir(parents=True, exist_ok=True)
    indexed = truth.set_index("pair_id")
    written = []
    for target in [t for t in NOISE_COLUMNS if t in indexed]:
        figure, axis = plt.subplots(figsize=(4.8, 4.5))
        for column in [c for c in scores.columns if c != "pair_id"]:
            found = _detector(scores, column, indexed, target)
            if found is None:
                continue
            values, positive = found
            auroc = detection_metrics(values, positive)["auroc"]
            oriented = values if auroc >= 0.5 else -values
            order = np.argsort(-oriented, kind="stable")
            _, first = np.unique(-oriented[order], return_index=True)  # one point per distinct threshold
            ends = np.r_[first[1:], len(order)] - 1
            tpr = np.r_[0, np.cumsum(positive[order])[ends] / positive.sum()]
            fpr = np.r_[0, np.cumsum(~positive[order])[ends] / (~positive).sum()]
            end = "" if auroc >= 0.5 else ", low end"
            axis.plot(fpr, tpr, label=f"{labels.get(column, column)} ({max(auroc, 1 - auroc):.2f}{end})")
        axis.plot([0, 1], [0, 1], color="grey", linestyle=":", linewidth=1)
        axis.set_xlabel("false positive rate")
        axis.set_ylabel("true positive rate")
        axis.set_title(f"detecting {target.replace('_', ' ')} pairs")
        axis.legend(fontsize=7, loc="lower right")
        written.append(_save(figure, out_dir / f"roc_{target}.png"))
    return written


def ground_truth(pairs: list[Any]) -> pd.DataFrame | None:
    """``pair_id`` + noise columns from the pairs' metadata, or ``None`` when the data has no ground truth."""
    if not pairs or not all(column in pairs[0].metadata for column in NOISE_COLUMNS):
        return None
    return pd.DataFrame(
        {
            "pair_id": [pair.pair_id for pair in pairs],
            **{column: [bool(pair.metadata.get(column)) for pair in pairs] for column in NOISE_COLUMNS},
        }
    )


def markdown_table(frame: pd.DataFrame, digits: int = 4, index: bool = False) -> str:
    """A DataFrame as a GitHub Markdown table (no extra dependency)."""
    frame = frame.reset_index() if index else frame
    header = "| " + " | ".join(str(c) for c in frame.columns) + " |"
    rule = "| " + " | ".join("---" for _ in frame.columns) + " |"

    def cell(value: Any) -> str:
        if isinstance(value, (float, np.floating)):
            return "nan" if np.isnan(value) else f"{value:.{digits}f}"
        return str(value)

    body = ["| " + " | ".join(cell(v) for v in row) + " |" for row in frame.itertuples(index=False)]
    return "\n".join([header, rule, *body])


def plot_scores(
    scores: pd.DataFrame,
    out_dir: Path,
    truth: pd.DataFrame | None,
    pairs: list[tuple[str, str]],
    labels: dict[str, str] | None = None,
) -> list[Path]:
    """Histogram of each score and joint scatter plots of the given score pairs; returns the PNG paths.

    The axes name each score by its label (``labels``: column -> label, :func:`score_labels`); the files by its
    column (``hist_<column>.png``, ``scatter_<a>_<b>.png``).
    """
    labels = labels or {}
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir.mkdir(parents=True, exist_ok=True)
    merged = scores.merge(truth, on="pair_id", how="left") if truth is not None else scores
    if truth is not None:
        category = np.where(merged["label_flipped"], "flipped", np.where(merged["ambiguous"], "ambiguous", "clean"))
    else:
        category = np.array(["all"] * len(merged))
    colours = {"clean": "tab:blue", "flipped": "tab:red", "ambiguous": "tab:orange", "all": "tab:blue"}
    written = []
    for name in [c for c in scores.columns if c != "pair_id"]:
        figure, axis = plt.subplots(figsize=(5, 3.5))
        groups = [g for g in colours if (category == g).any()]
        axis.hist([merged[name][category == g] for g in groups], bins=40, stacked=True, label=groups,
                  color=[colours[g] for g in groups])
        axis.set_xlabel(labels.get(name, name))
        axis.set_ylabel("pairs")
        axis.legend()
        axis.set_title(f"{labels.get(name, name)} ({len(merged)} pairs)")
        written.append(_save(figure, out_dir / f"hist_{name}.png"))
    for a, b in pairs:
        if a not in scores.columns or b not in scores.columns:
            continue
        figure, axis = plt.subplots(figsize=(4.5, 4.5))
        for g in [g for g in colours if (category == g).any()]:
            mask = category == g
            axis.scatter(merged[a][mask], merged[b][mask], s=6, alpha=0.6, label=g, color=colours[g])
        rho = spearman(merged[a], merged[b])
        axis.set_xlabel(labels.get(a, a))
        axis.set_ylabel(labels.get(b, b))
        axis.set_title(f"{labels.get(a, a)} vs {labels.get(b, b)} (Spearman {rho:.3f})")
        axis.legend()
        written.append(_save(figure, out_dir / f"scatter_{a}_{b}.png"))
    return written
