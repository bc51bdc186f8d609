"""``train.py``: one training run, or the TIF paper's selection pipeline as a sequence of the stages.

With ``select=full`` (the default) ``train.py`` is the training stage (:func:`prefalign.stages.train.run_training`).
With any other rule it runs, each stage through the same ``run(cfg)`` its own entry point calls, writing the
same files::

    1. warm-up    train.py  trainer.max_epochs=<pipeline.warmup_epochs>              -> <cache>/warmup/<key>/
    2. scores     score.py  policy=<warm-up run> scores=[<the rule's scores>]        -> <run>/score/
    3. selection  select.py scores=<run>/score select=<rule>                         -> <run>/select/selection.json
    4. training   train.py  data.selection=<run>/select/selection.json model.init_from=<warm-up run>  -> <run>/

The warm-up is an ordinary training run on all pairs, cached under a key of its resolved config
(:func:`prefalign.keys.training_key`), so a sweep over thresholds, kept fractions or (with ``pipeline.seed`` set)
training seeds warms up once; the scores are cached by the scoring stage likewise. The warm-up entry counts as
finished once its checksum record (``SHA256SUMS`` of its ``metrics.json`` and policy, written last) matches
(:func:`warmup_done`); a truncated or garbled one is named, moved aside and trained again. ``pipeline.restart_from=reference`` trains the final
run from the initial weights instead of the warm-up policy. ``<run>/pipeline.json`` lists every stage's
directory and the commands that repeat the stages by hand (into ``<run>/by_hand/``), which give the same numbers.

``evaluate_after_training=true`` then runs the evaluation stage on the trained run.
"""

from __future__ import annotations

import copy
import logging
import shlex
import shutil
import time
from pathlib import Path
from typing import Any

from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf, open_dict

from prefalign.atomic import (
    CHECKSUMS,
    entry_files,
    lock_path,
    produce_once,
    set_aside,
    verified,
    write_checksums,
    write_json,
)
from prefalign.config import launched_rank
from prefalign.data.datamodule import data_split_pairs
from prefalign.data.records import pairs_fingerprint
from prefalign.data.restrictions import PairRestrictions
from prefalign.keys import plain, training_key
from prefalign.models import ModelSource
from prefalign.run_setup import setup_run
from prefalign.scoring.config import build_scorers
from prefalign.stages.score import SCORING_INPUTS, run_scoring
from prefalign.selection.rules import FullSelection, SelectionRule
from prefalign.selection.config import select_rule
from prefalign.stages.select import run_selection, write_selection
from prefalign.stages.train import run_training

log = logging.getLogger(__name__)

RESTARTS = ("warmup", "reference")
SCORES_FROM = ("scoring", "warmup")
# the in-run summaries pipeline.inrun_summary chooses from (columns inrun_if_last, ... of <warm-up>/inrun/scores.parquet)
INRUN_SUMMARIES = ("last", "mean", "tracin", "first")
# the in-run record of a warm-up that gives the influence columns (pipeline.scores_from=warmup); its parameters
# are the influence scorer's, its other settings come from pipeline.inrun
DEFAULT_INRUN = {"_target_": "prefalign.inrun.callback.InRunInfluence", "refresh_at_epoch_start": True}


def needs_selection(cfg: DictConfig) -> bool:
    """Whether ``select`` asks for anything but the full data."""
    return cfg.get("select") is not None and not isinstance(select_rule(cfg.select), FullSelection)


def derive(cfg: DictConfig, changes: dict[str, Any]) -> DictConfig:
    """A copy of ``cfg`` with dotted keys set (the stage configs of the pipeline); ``hydra:`` interpolations
    are resolved first, so the copy works outside the running app too."""
    stage = OmegaConf.create(OmegaConf.to_container(cfg, resolve=True))
    with open_dict(stage):
        for key, value in changes.items():
            OmegaConf.update(stage, key, value, merge=False, force_add=True)
    return stage


def with_selection_seed(cfg: DictConfig) -> DictConfig:
    """``cfg`` with ``seed`` set to ``pipeline.seed`` for the stages before the final training (warm-up, scores,
    selection: every ``${seed}`` of the rule and the scorers follows it), or ``cfg`` itself when that is null."""
    seed = cfg.pipeline.get("seed")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
        raise ValueError(f"pipeline.seed must be a whole number or null, got {seed!r}")
    if seed is None or seed == int(cfg.seed):
        return cfg
    stage = copy.deepcopy(cfg)
    with open_dict(stage):
        stage.seed = int(seed)
    return stage


def check_pipeline(cfg: DictConfig) -> tuple[SelectionRule, list[str]]:
    """Everything of the pipeline that can be checked without a model, before the first forward pass.

    Returns:
        The rule and the score names to compute (the rule's, then ``pipeline.extra_scores``).
    """
    pipeline = cfg.pipeline
    if pipeline.restart_from not in RESTARTS:
        raise ValueError(f"pipeline.restart_from must be one of {RESTARTS}, got {pipeline.restart_from!r}")
    if int(pipeline.warmup_epochs) < 0:
        raise ValueError(f"pipeline.warmup_epochs must be 0 or more, got {pipeline.warmup_epochs}")
    if pipeline.get("scores_from", "scoring") not in SCORES_FROM:
        raise ValueError(f"pipeline.scores_from must be one of {SCORES_FROM}, got {pipeline.scores_from!r}")
    if pipeline.get("inrun_summary", "last") not in INRUN_SUMMARIES:
        raise ValueError(f"pipeline.inrun_summary must be one of {INRUN_SUMMARIES}, got {pipeline.inrun_summary!r}")
    if pipeline.get("scores_from", "scoring") == "warmup" and int(pipeline.warmup_epochs) == 0:
        raise ValueError("pipeline.scores_from=warmup takes the scores from the warm-up's in-run record: it needs pipeline.warmup_epochs >= 1")
    if int(pipeline.shard_size) <= 0:
        raise ValueError(f"pipeline.shard_size must be a positive number of pairs, got {pipeline.shard_size}")
    if cfg.data.get("selection"):
        raise ValueError(
            f"select={cfg.select.get('name', cfg.select._target_)} and data.selection={cfg.data.selection} both choose "
            "the training pairs: drop one (data.selection trains on a selection made earlier, select=full)"
        )
    rule = select_rule(cfg.select)
    names = list(dict.fromkeys([*rule.scores, *(pipeline.get("extra_scores") or [])]))
    build_scorers(cfg, names)  # unknown score names and bad scorer settings fail here
    return rule, names


def inrun_names(cfg: DictConfig, names: list[str]) -> list[str]:
    """The scores of ``names`` that ``pipeline.scores_from=warmup`` takes from the warm-up's in-run record: the
    exact-influence ones (:class:`~prefalign.scoring.influence.InfluenceScorer`); none otherwise."""
    if cfg.pipeline.get("scores_from", "scoring") != "warmup":
        return []
    from prefalign.scoring.influence import InfluenceScorer

    return [scorer.name for scorer in build_scorers(cfg, names) if isinstance(scorer, InfluenceScorer)]


def warmup_inrun(cfg: DictConfig, names: list[str]) -> dict[str, Any] | None:
    """The warm-up's ``inrun`` config under ``pipeline.scores_from=warmup`` (``None``: no record): the run's own
    ``inrun`` if it has one, else :data:`DEFAULT_INRUN` with ``pipeline.inrun``'s settings, over the parameters of
    the (first) influence score the rule reads."""
    chosen = inrun_names(cfg, names)
    if not chosen:
        return None
    from prefalign.scoring.config import scorer_config

    inrun = plain(cfg.get("inrun")) or {**DEFAULT_INRUN, **(plain(cfg.pipeline.get("inrun")) or {}), "seed": int(cfg.seed)}
    inrun["parameters"] = plain(scorer_config(cfg, chosen[0]).get("parameters", "trainable"))
    inrun.pop("online", None)  # the warm-up trains on every pair: an online rule is the final run's business
    return inrun


def warmup_config(cfg: DictConfig, names: list[str] | None = None) -> tuple[DictConfig, Path]:
    """The warm-up stage: ``cfg`` as a plain training run on all pairs for ``pipeline.warmup_epochs``, and its
    cached run directory (named by the key of that config). With ``pipeline.scores_from=warmup`` and influence
    scores among ``names`` it records the in-run influence (:func:`warmup_inrun`), which is then part of its key."""
    changes = {
        "trainer.max_epochs": int(cfg.pipeline.warmup_epochs),
        # validated at its end only: the final run's validation schedule (curves of the selected run) is not the
        # warm-up's, which is then shared by the runs that differ only there
        "trainer.val_check_interval": None,
        # all the pairs, unweighted and shuffled: the same pairs as the final run's, noise included
        **PairRestrictions.from_config(cfg.data).without_choices().config_changes(),
        "ckpt_path": None,
        "evaluate_after_training": False,
        "select": {"_target_": "prefalign.selection.FullSelection", "keep_fraction": None},
        "inrun": warmup_inrun(cfg, names or []),
    }
    warm = derive(cfg, changes)
    source: ModelSource = instantiate(warm.model)
    pairs = data_split_pairs(warm.data, "train")
    key = training_key(warm, source.policy_fingerprint(), pairs_fingerprint(pairs) + pairs_fingerprint(data_split_pairs(warm.data, "val")))
    folder = Path(str(cfg.paths.cache_dir)).expanduser() / "warmup" / key
    with open_dict(warm):
        warm.paths.output_dir = str(folder)
    return warm, folder


def warmup_files(folder: Path, inrun: bool) -> list[Path]:
    """What later stages read of a warm-up entry, covered by its checksum record."""
    return [folder / "metrics.json", *entry_files(folder / "policy"), *([folder / "inrun" / "scores.parquet"] if inrun else [])]


def warmup_done(folder: Path, cache_dir: Path, inrun: bool = False) -> bool:
    """Whether the warm-up entry ``folder`` is finished and intact: its checksum record, written when the run has
    finished, matches its ``metrics.json`` and policy (and, with ``inrun``, its in-run summaries). A corrupt one
    is named and moved aside (:func:`prefalign.atomic.verified`); one without a record is unfinished (it resumes
    from its checkpoint)."""
    required = ("metrics.json", "policy/config.json", *(("inrun/scores.parquet",) if inrun else ()))
    return verified(folder, cache_dir, "warmup", required=required, written_in_place=True)


def cached_warmup(cfg: DictConfig, names: list[str] | None = None) -> tuple[Path, bool]:
    """The warm-up run of the pipeline (:func:`warmup_config`), from the cache or trained into it.

    Returns:
        Its folder and whether it came from the cache.
    """
    warm_cfg, warm_dir = warmup_config(cfg, names)
    inrun = bool(warm_cfg.get("inrun"))
    cache_dir = Path(str(cfg.paths.cache_dir)).expanduser()

    def warm_up() -> None:
        # an interrupted warm-up resumes from its checkpoint; once done, the cache keeps its policy only
        last = warm_dir / "checkpoints" / "last.ckpt"
        if last.is_file():
            log.info("warm-up: resuming %s", last)
            warm_cfg.ckpt_path = str(last)
        else:
            if warm_dir.exists():  # what a run killed before its first checkpoint (or an older prefalign) left
                moved = set_aside(warm_dir, cache_dir, "warmup")
                log.info("warm-up: %s holds no finished run and no checkpoint to resume; moved to %s", warm_dir, moved)
            log.info("warm-up: %d epoch(s) on all training pairs -> %s", int(cfg.pipeline.warmup_epochs), warm_dir)
        run_training(warm_cfg)
        shutil.rmtree(warm_dir / "checkpoints", ignore_errors=True)
        if launched_rank() == 0:  # the checksums of what later runs read, last: they mark the entry finished
            write_checksums(warm_dir / CHECKSUMS, warmup_files(warm_dir, inrun))

    # the jobs of a sweep that run at the same time share this warm-up: one trains it, the others wait for it
    # (two trainings into one folder would mix their checkpoints) and then read it from the cache
    lock = lock_path(cache_dir, "warmup", warm_dir.name)
    hit = produce_once(lock, lambda: warmup_done(warm_dir, cache_dir, inrun), warm_up, what=f"the warm-up run {warm_dir}")
    if hit:
        log.info("warm-up run from cache %s", warm_dir)
    return warm_dir, hit


def override_value(value: Any) -> str:
    """``value`` as a Hydra override writes it (``null``, ``true``, ``[a,b]``)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(override_value(item) for item in value) + "]"
    return str(value)


def command(script: str, overrides: dict[str, Any], base: list[str]) -> str:
    """The shell command that repeats a stage by hand: the run's own overrides, then the stage's."""
    pieces = [*base, *(f"{key}={value}" for key, value in overrides.items())]
    return " ".join(["python", script, *(shlex.quote(piece) for piece in pieces)])


def user_overrides() -> tuple[list[str], list[str], str | None]:
    """The overrides this run was started with, split into those of the training runs and those of the rule and
    its scorers (``select*``, ``scorers.*``, ``pipeline.*``), and the ``select`` option chosen (outside a Hydra
    app: none)."""
    try:
        from hydra.core.hydra_config import HydraConfig

        hydra_cfg = HydraConfig.get()
    except ValueError:
        return [], [], None
    rule_keys = ("select", "scorers.", "+scorers.", "++scorers.")
    overrides = [item for item in hydra_cfg.overrides.task if not item.startswith(("hydra.", "pipeline."))]
    training = [item for item in overrides if not item.startswith(rule_keys)]
    rule = [item for item in overrides if item.startswith(rule_keys) and not item.startswith("select=")]
    return training, rule, hydra_cfg.runtime.choices.get("select")


def run_selection_pipeline(cfg: DictConfig) -> dict[str, Any]:
    """Warm-up, scores, selection, then the final training run (module docstring); returns its metrics."""
    start = time.perf_counter()
    # the warm-up, the scores and the selection take pipeline.seed when it is set, so that a sweep over the
    # training seed (seed=0,1,2) holds the selection fixed and varies the final training only
    stage = with_selection_seed(cfg)
    rule, names = check_pipeline(stage)
    run_dir = Path(cfg.paths.output_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    base, rule_overrides, choice = user_overrides()

    # 1. the warm-up: an ordinary training run, cached
    epochs = int(cfg.pipeline.warmup_epochs)
    if epochs == 0:
        log.warning("pipeline.warmup_epochs=0: scoring the initial model (IRM is then zero for every pair)")
        warm_dir, warm_hit = None, False
    else:
        warm_dir, warm_hit = cached_warmup(stage, names)

    # 2. the scores the rule reads (and the extra ones), against the warm-up policy; with scores_from=warmup the
    # influence ones are the warm-up's own in-run record, and only the others are scored
    score_dir = run_dir / "score"
    from_record = inrun_names(stage, names)
    scored = [name for name in names if name not in from_record]
    score_cfg = derive(
        stage,
        {
            "policy": str(warm_dir) if warm_dir else None,
            "scores": scored,
            "shard_size": int(cfg.pipeline.shard_size),
            "task_name": "score",
            "paths.output_dir": str(score_dir),
        },
    )
    scoring = run_scoring(score_cfg) if scored else None
    if from_record:
        assert warm_dir is not None
        add_inrun_scores(score_dir / "scores.parquet", warm_dir, from_record, cfg.pipeline.get("inrun_summary", "last"), scored,
                         score_cfg)

    # 3. the selection
    select_dir = run_dir / "select"
    if names:
        selection = run_selection(
            derive(stage, {"scores": str(score_dir), "task_name": "select", "paths.output_dir": str(select_dir)})
        )
    else:  # a rule that reads no score (random): the pairs' ids are all it needs
        selection = select_without_scores(stage, rule, select_dir)

    # 4. the final training run on the selection
    restart = cfg.pipeline.restart_from
    final = {"data.selection": selection["path"]}
    if restart == "warmup" and warm_dir is not None:
        final["model.init_from"] = str(warm_dir)
    result = run_training(derive(cfg, final))

    # the same stages by hand (pipeline.json), into <run>/by_hand/ so that nothing of this run is overwritten:
    # the rule's and its scorers' overrides go to score.py and select.py (with the seed, which rules may read)
    by_hand = run_dir / "by_hand"
    warm_by_hand = by_hand / "warmup" if warm_dir is not None else None
    rule_args = [f"select={choice or rule.name}", *rule_overrides]
    seed_args = [item for item in base if item.startswith("seed=")]
    stage_seed = {} if stage is cfg else {"seed": int(stage.seed)}  # pipeline.seed: the stages before the training
    if stage_seed:
        seed_args = [f"seed={stage_seed['seed']}"]
    commands = []
    if warm_by_hand is not None:
        warm_args = {"trainer.max_epochs": epochs}
        if from_record:  # the warm-up records the in-run influence the scores are taken from
            inrun = warmup_inrun(stage, names) or {}
            warm_args.update({"inrun": "influence", **{f"inrun.{key}": override_value(value) for key, value in inrun.items() if key != "_target_"}})
        commands.append(command("train.py", {**warm_args, **stage_seed, "hydra.run.dir": warm_by_hand}, base))
    if from_record:  # no command of its own: the columns are copied from the record's summaries
        commands.append(
            f"# {', '.join(from_record)}: column inrun_{'tracin' if cfg.pipeline.inrun_summary == 'tracin' else 'if_' + cfg.pipeline.inrun_summary} "
            f"of {warm_by_hand}/inrun/scores.parquet, added to {by_hand}/score/scores.parquet"
        )
    if scored:
        policy = {"policy": warm_by_hand or "null", "scores": f"[{','.join(scored)}]"}
        commands.append(command("score.py", {**policy, **stage_seed, "hydra.run.dir": by_hand / "score"}, [*base, *rule_args]))
    if names:
        commands.append(
            command("select.py", {"scores": by_hand / "score", "hydra.run.dir": by_hand / "select"}, [*rule_args, *seed_args])
        )
    # a rule that reads no score has no select.py step: its selection.json is the one of this run
    by_hand_final = {"data.selection": by_hand / "select" / "selection.json" if names else selection["path"]}
    if "model.init_from" in final:
        by_hand_final["model.init_from"] = warm_by_hand
    commands.append(command("train.py", {**by_hand_final, "hydra.run.dir": by_hand / "train"}, base))
    record = {
        "warmup": {"dir": str(warm_dir) if warm_dir else None, "from_cache": warm_hit},
        "score": {
            "dir": str(score_dir),
            "from_cache": scoring["from_cache"] if scoring else None,
            "scores": names,
            "from_inrun_record": from_record,
        },
        "select": {"dir": str(select_dir), "file": selection["path"]},
        "train": {"dir": str(run_dir), "restart_from": restart},
        "commands": commands,
        "elapsed_s": round(time.perf_counter() - start, 1),
    }
    if launched_rank() != 0:  # another process of a multi-device run: rank 0 writes the run's files
        return result
    write_json(record, run_dir / "pipeline.json")
    result["selection"] = {
        **result.get("selection", {}),
        "kept_fraction": selection["kept_fraction"],
        "extra_scores": [name for name in names if name not in rule.scores],
        "warmup_from_cache": warm_hit,
        "scores_from_cache": scoring["from_cache"] if scoring else True,
        "warmup_dir": str(warm_dir) if warm_dir else None,
        "restart_from": restart,
    }
    result["run"]["elapsed_s"] = record["elapsed_s"]
    write_json(result, run_dir / "metrics.json")
    return result


def add_inrun_scores(
    path: Path, warm_dir: Path, names: list[str], summary: str, scored: list[str], score_cfg: DictConfig | None = None
) -> Path:
    """``names`` as columns of the scores file ``path``, each the warm-up's in-run summary ``summary``
    (``<warm-up>/inrun/scores.parquet``'s ``inrun_if_<summary>`` or ``inrun_tracin``); added to the file the scoring
    stage wrote (``scored`` non-empty), or a new one whose provenance records what the scoring stage's would
    (``score_cfg``'s scoring inputs and model), so that ``select.py analyze=true`` finds the data it was made on."""
    import json

    import pyarrow as pa
    import pyarrow.parquet as pq

    from prefalign.atomic import atomic_write
    from prefalign.data.scores_file import PROVENANCE_KEY, read_scores_table

    column = "inrun_tracin" if summary == "tracin" else f"inrun_if_{summary}"
    record, record_provenance = read_scores_table(warm_dir / "inrun" / "scores.parquet")
    values = dict(zip(record.column("pair_id").to_pylist(), record.column(column).to_pylist()))
    if scored:
        table, provenance = read_scores_table(path)
    else:
        table = pa.table({"pair_id": record.column("pair_id")})
        provenance = {key: record_provenance.get(key) for key in ("data_fingerprint", "policy")}
        if score_cfg is not None:
            provenance["config"] = {name: plain(score_cfg.get(name)) for name in SCORING_INPUTS}
            provenance["model"] = str(score_cfg.model.get("name"))
        provenance["scorers"] = {}
    ids = table.column("pair_id").to_pylist()
    missing = [pair_id for pair_id in ids if values.get(pair_id) is None]
    if missing:
        raise ValueError(
            f"the warm-up's in-run record {warm_dir / 'inrun'} has no {column} for {len(missing)} pairs, e.g. "
            f"{missing[:5]} (never trained, or trained only with weight 0)"
        )
    for name in names:
        table = table.append_column(name, pa.array([float(values[pair_id]) for pair_id in ids], pa.float64()))
        provenance["scorers"][name] = {
            "class": "InRunInfluence",
            "label": f"In-run IF ({summary}) of the warm-up",
            "from": str(warm_dir / "inrun" / "scores.parquet"),
            "column": column,
        }
    table = table.replace_schema_metadata({PROVENANCE_KEY: json.dumps(provenance, default=str).encode()})
    return atomic_write(path, lambda tmp: pq.write_table(table, tmp))


def select_without_scores(cfg: DictConfig, rule: SelectionRule, folder: Path) -> dict[str, Any]:
    """The selection stage of a rule that reads no score (``random``): applied to the pair ids alone."""
    import pandas as pd

    # the pairs the training stage will load, cleaned the same way
    setup = setup_run(derive(cfg, {"paths.output_dir": str(folder)}))
    ids = [pair.pair_id for pair in setup.datamodule.pairs["train"]]
    selection = rule.select(pd.DataFrame({"pair_id": ids}))
    return write_selection(folder, selection, rule, setup.datamodule.fingerprints["train"], scores_file=None)
