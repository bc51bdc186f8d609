"""The scoring framework: scorers, the context they run in, and the sharded, resumable runner.

A *scorer* gives every training pair one number (a column of the scores file). Scorers run in a
:class:`ScoringContext`: the current policy ``theta`` (after warm-up, in the papers' pipeline), the loss it is
trained with, the data (train and validation pairs with their cached reference log-probs), the model source
(to load the reference model or train auxiliary models), the run's config (auxiliary models train with its
optimizer, scheduler and trainer settings, through :func:`prefalign.trainer.fit_auxiliary`) and the cache
directory. A scorer's column name and its resolved config (:attr:`Scorer.settings`, what every cache key of
it is made of) come from :func:`prefalign.scoring.config.build_scorers`.

:class:`ScoreRunner` walks the training pairs in shards. For each batch it runs the policy once (when any
scorer needs the policy's log-probs: IRM, LossDiff) and hands the result to every scorer, so no forward pass is
duplicated between the scores of one run. Each finished shard is written atomically as its own Parquet file
that holds its pairs' ``pair_id``\\ s; an interrupted run reads which pairs the finished shards hold and computes
only the others, whatever the shard size of either run. At the end the shards are concatenated into
``scores.parquet`` (``pair_id`` + one column per score) whose schema metadata holds the provenance: the
resolved model, data and loss configs, the policy scored, the data fingerprint and the scorers' configs.

Each shard and ``scores.parquet`` has its checksum record beside it (``<file>.sha256``, sha256sum's format),
written after it: a shard counts as finished, and the scores as done (:func:`scores_done`), only while the file
matches it. A truncated or garbled shard, or one that holds other pairs or columns, is named in a warning, moved to
``<cache_dir>/corrupt/scores/`` and scored again.

Under a launcher (``torchrun --nproc_per_node N score.py ...``; :mod:`prefalign.distributed`) every rank runs
the same shards: each scores every ``N``-th batch of a shard (the batches one process would make, so the same
numbers), the scores are gathered in pair order and rank 0 writes the shard, and at the end ``scores.parquet``;
the others wait. Rank 0 alone reads which pairs the finished shards hold, so a run resumed with another
number of processes (or shard size) computes only the missing pairs, and the files do not depend on either.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from omegaconf import DictConfig
from torch import Tensor
from tqdm.auto import tqdm

from prefalign import distributed
from prefalign.atomic import CorruptEntryError, atomic_write, discard, file_record, verified, write_checksums
from prefalign.data.datamodule import PreferenceDataModule
from prefalign.data.scores_file import PROVENANCE_KEY, read_scores  # noqa: F401 (read_scores: re-exported)
from prefalign.keys import LOGP_SETTINGS, config_inputs, content_key
from prefalign.logprobs import LogpSettings, pair_logps
from prefalign.losses import PreferenceLoss
from prefalign.models import ModelSource
from prefalign.module import reference_logps
from prefalign.reference import move_to
from prefalign.trainer import fit_auxiliary

log = logging.getLogger(__name__)

@dataclass
class ScoringContext:
    """Everything a scorer may need.

    Attributes:
        policy: the model being scored against (``theta``), on its device.
        policy_fingerprint: identifies ``theta`` (initial weights + training that produced it).
        loss: the training loss ``ell`` (IF, LossDiff and IRM are taken under it).
        datamodule: train and validation pairs, tokenised, with reference log-probs attached.
        source: the model source (to load the reference or initial weights for auxiliary models).
        cache_dir: the shared cache root.
        work_dir: where this scoring run writes (shards, scores file, artifacts).
        logp_settings: how forward passes run the model (the run's :class:`~prefalign.logprobs.LogpSettings`).
        seed: seed for random scores and auxiliary training.
        cfg: the run's resolved config (what auxiliary-model keys are made of).
    """

    policy: torch.nn.Module
    policy_fingerprint: str
    loss: PreferenceLoss
    datamodule: PreferenceDataModule
    source: ModelSource
    cache_dir: Path
    work_dir: Path
    logp_settings: LogpSettings = LogpSettings()
    seed: int = 0
    cfg: DictConfig | None = None

    @property
    def device(self) -> torch.device:
        return next(self.policy.parameters()).device

    def key(self, kind: str, *parts: Any) -> str:
        """A cache key of an artifact a scorer builds (auxiliary models): ``parts`` plus the run's settings that
        shape every pass (model, loss, seed, prefix sharing, packing, vocabulary chunks)."""
        names = ("model", "loss", "seed", *LOGP_SETTINGS)
        inputs = config_inputs(self.cfg, names) if self.cfg is not None else {}
        return content_key(kind, inputs, str(self.device.type), *parts)

    def fit(
        self, model: torch.nn.Module, loader: Any, settings: dict[str, Any], epochs: int, desc: str, loss: PreferenceLoss | None = None
    ) -> torch.nn.Module:
        """Train an auxiliary model with the one trainer builder (:func:`prefalign.trainer.fit_auxiliary`)."""
        return fit_auxiliary(
            model, loss or self.loss, loader, settings, epochs, self.seed, self.logp_settings, desc
        )

    def data_fingerprint(self, split: str = "train") -> str:
        return self.datamodule.datasets[split].fingerprint()

    def pair_logps(self, model: torch.nn.Module, batch: dict[str, Any], mismatched: bool = False) -> dict[str, Tensor]:
        """:func:`~prefalign.logprobs.pair_logps` of ``model`` with this run's log-prob settings."""
        return pair_logps(model, batch, self.logp_settings, mismatched=mismatched)


class Scorer:
    """Base class of a per-pair score.

    Subclasses set :attr:`needs_policy_logps` when they use the policy's log-probs of the batch, and implement
    :meth:`score_batch`; :meth:`prepare` runs once before the first batch (validation gradients, auxiliary
    models) and :meth:`release` frees what it built. :attr:`name` (the column) and :attr:`settings` (the resolved
    config the scorer was built from: the key of everything it computes) are set by
    :func:`prefalign.scoring.config.build_scorers`; a scorer built by hand keeps its class's default name.
    :attr:`label` is the score's name in tables and reports (:meth:`display_label`): each class sets its own, and
    the scores file records it beside the column (a function of the class and the column, both in the file's cache
    key, so a cached file never records another run's label).

    Under a launcher every rank runs :meth:`prepare` and scores its share of the batches. A scorer whose
    :meth:`prepare` uses collectives (the influence's all-reduced validation gradient) sets
    :attr:`prepares_together`, and every rank prepares at once; any other prepares on rank 0 first and then on the
    others, so that what rank 0 builds and caches (LossDiff's auxiliary model) the others load from the cache
    instead of building it at the same moment (with a cache folder the others cannot see, they build the same
    model themselves: same data, same seed).
    """

    name: str = "score"
    # the score's name in tables and reports (:meth:`display_label`)
    label: str = ""
    needs_policy_logps: bool = False
    prepares_together: bool = False
    settings: dict[str, Any] = {}

    def display_label(self) -> str:
        """The score's name in tables and reports: its ``label``, or else its column name.

        A configuration of a class under a column of its own (``+scorers.armo.option=reward_model``) adds the
        column to the label (``Reward model (armo)``), so two columns of one class read apart.
        """
        if self.label and self.name != type(self).name:
            return f"{self.label} ({self.name})"
        return self.label or self.name

    def prepare(self, context: ScoringContext) -> None:
        """Once, before scoring: build what every batch needs."""

    def score_batch(self, context: ScoringContext, batch: dict[str, Any], shared: dict[str, Tensor]) -> Tensor:
        """Scores ``(B,)`` of one batch. ``shared`` holds the policy log-probs when any scorer asked for them."""
        raise NotImplementedError

    def release(self) -> None:
        """Free models and tensors built by :meth:`prepare`."""


SCORES_FILE = "scores.parquet"


def atomic_write_parquet(table: pa.Table, path: Path) -> None:
    atomic_write(path, lambda tmp: pq.write_table(table, tmp))


def write_verified_parquet(table: pa.Table, path: Path) -> None:
    """A Parquet file of a cache entry, then its checksum record (:func:`prefalign.atomic.file_record`)."""
    atomic_write_parquet(table, path)
    write_checksums(file_record(path), [path])


def scores_done(work_dir: Path, cache_dir: Path) -> bool:
    """Whether the scores entry ``work_dir`` holds its finished ``scores.parquet``, as its checksum record says.

    A ``scores.parquet`` without a record is unfinished (the runner writes it again from the shards); one that does not
    match its record is named, moved aside and written again (:func:`prefalign.atomic.verified`).
    """
    path = Path(work_dir) / SCORES_FILE
    return verified(path, cache_dir, "scores", record=file_record(path), written_in_place=True)


class ScoreRunner:
    """Computes scores for every training pair, shard by shard, resumably.

    Args:
        scorers: the scorers to run (their names must differ).
        shard_size: pairs per new shard file; a shard is the unit of resumption (a run resumed with another
            shard size reuses the pairs the finished shards hold).
        batch_size: pairs per forward pass (defaults to the data module's ``eval_batch_size``).
    """

    def __init__(self, scorers: list[Scorer], shard_size: int = 256, batch_size: int | None = None) -> None:
        names = [scorer.name for scorer in scorers]
        if len(set(names)) != len(names):
            raise ValueError(f"score names must be unique, got {names}")
        if not scorers:
            raise ValueError("no scorers configured")
        self.scorers = scorers
        self.shard_size = shard_size
        self.batch_size = batch_size

    def run(self, context: ScoringContext, provenance: dict[str, Any] | None = None) -> Path:
        """Score the training pairs; returns the path of ``scores.parquet``.

        Under a launcher every rank calls this; rank 0 writes the files and the others return once it has.
        """
        work_dir = context.work_dir
        shard_dir = work_dir / "shards"
        dataset = context.datamodule.datasets["train"]
        pair_ids = [item.pair_id for item in dataset.items]
        position = {pair_id: index for index, pair_id in enumerate(pair_ids)}

        def plan() -> list[list[int]]:
            finished, covered = self._finished_shards(shard_dir, position, Path(context.cache_dir))
            todo = self._new_shards([index for index in range(len(pair_ids)) if index not in covered])
            if finished:
                log.info(
                    "scoring: resuming, %d of %d shards already done (%d of %d pairs)",
                    len(finished), len(finished) + len(todo), len(covered), len(pair_ids),
                )
            return todo

        todo = distributed.on_main(plan)  # rank 0 reads the shards; every rank scores its share of the same plan
        timings: dict[str, float] = {}
        if todo:
            for scorer in self.scorers:
                start = time.perf_counter()
                self._prepare(scorer, context)
                timings[f"prepare/{scorer.name}"] = time.perf_counter() - start
            try:
                self._score_shards(context, todo, shard_dir, timings)
            finally:
                for scorer in self.scorers:
                    scorer.release()
        path = work_dir / SCORES_FILE
        distributed.on_main(lambda: self._write_scores(context, shard_dir, position, path, timings, provenance))
        return path

    @staticmethod
    def _prepare(scorer: Scorer, context: ScoringContext) -> None:
        """:meth:`Scorer.prepare` on every rank: at once, or rank 0 first (see :class:`Scorer`)."""
        if scorer.prepares_together or distributed.world_size() == 1:
            scorer.prepare(context)
            return
        distributed.on_main(lambda: scorer.prepare(context))
        if not distributed.is_main():
            scorer.prepare(context)

    def _write_scores(
        self,
        context: ScoringContext,
        shard_dir: Path,
        position: dict[str, int],
        path: Path,
        timings: dict[str, float],
        provenance: dict[str, Any] | None,
    ) -> None:
        """Concatenate the shards into ``path`` in data order, with the provenance in its metadata."""
        names = self.columns()
        schema = pa.schema([("pair_id", pa.string()), *((name, pa.float64()) for name in names[1:])])
        tables = []
        for shard in sorted(shard_dir.glob("shard-*.parquet")):
            try:
                tables.append(pq.read_table(shard, columns=names).cast(schema))
            except (OSError, pa.ArrowException) as error:  # checked in plan(): changed since
                raise CorruptEntryError(shard, f"this score shard cannot be read ({error})") from error
        table = pa.concat_tables(tables)
        # data order; a pair held by two shards (two runs of different shard sizes at once) is taken once
        indices = np.array([position.get(pair_id, -1) for pair_id in table.column("pair_id").to_pylist()])
        _, first = np.unique(indices, return_index=True)
        table = table.take(first[indices[first] >= 0])
        if table.column("pair_id").to_pylist() != list(position):
            raise RuntimeError(f"the shards in {shard_dir} do not match the data; delete them and score again")
        record = {
            **(provenance or {}),
            "policy_fingerprint": context.policy_fingerprint,
            "token_fingerprint": context.data_fingerprint("train"),
            "data_fingerprint": context.datamodule.fingerprints.get("train"),
            "scorers": {
                scorer.name: {"class": type(scorer).__name__, "label": scorer.display_label(), **scorer.settings}
                for scorer in self.scorers
            },
            "timings_s": timings,
        }
        table = table.replace_schema_metadata({PROVENANCE_KEY: json.dumps(record, default=str).encode()})
        write_verified_parquet(table, path)

    def columns(self) -> list[str]:
        """The columns of every shard and of ``scores.parquet``: ``pair_id``, then one per scorer."""
        return ["pair_id", *(scorer.name for scorer in self.scorers)]

    def _finished_shards(
        self, shard_dir: Path, position: dict[str, int], cache_dir: Path
    ) -> tuple[list[Path], set[int]]:
        """The finished shard files in ``shard_dir`` and the data indices (``position``: pair_id -> index) of the
        pairs they hold, read from their ``pair_id`` column, so that shards of any earlier shard size count.

        A shard that does not match its checksum record, has none (written by an older prefalign, or killed between
        the two), cannot be read, or holds other columns or pairs than this run's is named in a warning and moved to
        ``<cache_dir>/corrupt/scores/``; its pairs are scored again.
        """
        finished: list[Path] = []
        covered: set[int] = set()
        for path in sorted(shard_dir.glob("shard-*.parquet")):
            record = file_record(path)
            if not verified(path, cache_dir, "scores", record=record):
                continue
            try:
                held = self._shard_pairs(path, position)
            except CorruptEntryError as error:
                discard(path, cache_dir, "scores", error, also=[record])
                continue
            finished.append(path)
            covered.update(position[pair_id] for pair_id in held)
        return finished, covered

    def _shard_pairs(self, path: Path, position: dict[str, int]) -> list[str]:
        """The pair ids a shard holds, once its columns are this run's.

        Raises:
            CorruptEntryError: naming the shard: unreadable, other columns or types, or pairs not in the data.
        """
        names = self.columns()
        try:
            schema = pq.read_schema(path)
            held = pq.read_table(path, columns=["pair_id"]).column("pair_id").to_pylist()
        except (OSError, pa.ArrowException) as error:
            raise CorruptEntryError(path, f"this score shard cannot be read ({error})") from error
        if sorted(schema.names) != sorted(names):
            raise CorruptEntryError(path, f"this score shard has the columns {schema.names}, not {names}")
        def fits(name: str) -> bool:
            kind = schema.field(name).type
            if name == "pair_id":
                return pa.types.is_string(kind) or pa.types.is_large_string(kind)
            return pa.types.is_floating(kind)

        wrong = [f"{name}: {schema.field(name).type}" for name in names if not fits(name)]
        if wrong:
            raise CorruptEntryError(path, f"this score shard has columns of the wrong type ({', '.join(wrong)})")
        unknown = [pair_id for pair_id in held if pair_id not in position]
        if unknown:
            raise CorruptEntryError(path, f"this score shard holds pairs that are not in the data ({unknown[:3]})")
        return held

    def _new_shards(self, missing: list[int]) -> list[list[int]]:
        """The data indices ``missing`` (ascending) cut into shards of consecutive pairs, at most ``shard_size`` each."""
        shards: list[list[int]] = []
        for index in missing:
            if shards and index == shards[-1][-1] + 1 and len(shards[-1]) < self.shard_size:
                shards[-1].append(index)
            else:
                shards.append([index])
        return shards

    def _score_shards(
        self, context: ScoringContext, todo: list[list[int]], shard_dir: Path, timings: dict[str, float]
    ) -> None:
        dataset = context.datamodule.datasets["train"]
        batch_size = self.batch_size or context.datamodule.eval_batch_size
        progress = tqdm(
            total=sum(len(indices) for indices in todo), desc="scoring", unit="pair", dynamic_ncols=True,
            disable=not distributed.is_main(),
        )
        start, done = time.perf_counter(), 0
        for indices in todo:
            # batches of similar length inside the shard (less padding); values go back to data order
            ordered = sorted(
                indices,
                key=lambda i: (
                    max(len(dataset.items[i].chosen_ids), len(dataset.items[i].rejected_ids)),
                    len(dataset.items[i].prompt_ids),
                ),
            )
            batches = [ordered[offset : offset + batch_size] for offset in range(0, len(ordered), batch_size)]
            mine = distributed.share(batches)  # this rank's batches, the same ones a single process makes
            local = []
            for chunk in mine:
                local.append(self._score_batch(context, chunk, timings))
                progress.update(len(chunk))
                progress.set_postfix(pairs_per_s=f"{progress.n / (time.perf_counter() - start):.1f}")
            scored = distributed.gather_shares(local)
            progress.update(len(indices) - sum(len(chunk) for chunk in mine))  # the other ranks' pairs
            done += len(indices)
            if not distributed.is_main():
                continue
            position = {index: k for k, index in enumerate(indices)}
            columns = {scorer.name: np.full(len(indices), np.nan) for scorer in self.scorers}
            for chunk, values in zip(batches, scored):
                for name, column in values.items():
                    columns[name][[position[i] for i in chunk]] = column
            table = pa.table({"pair_id": [dataset.items[i].pair_id for i in indices], **columns})
            # named by the range of data indices it holds: unique across shard sizes, and in data order when sorted
            write_verified_parquet(table, shard_dir / f"shard-{indices[0]:07d}-{indices[-1] + 1:07d}.parquet")
        progress.close()
        elapsed = time.perf_counter() - start
        log.info("scoring: %d pairs in %.1f s (%.2f pairs/s)", done, elapsed, done / max(elapsed, 1e-9))

    def _score_batch(
        self, context: ScoringContext, chunk: list[int], timings: dict[str, float]
    ) -> dict[str, np.ndarray]:
        """Every scorer's values of the pairs ``chunk`` (data indices, in batch order), one forward of the policy."""
        dataset = context.datamodule.datasets["train"]
        batch = move_to(context.datamodule.collate([dataset[i] for i in chunk]), context.device)
        shared: dict[str, Tensor] = {}
        if any(scorer.needs_policy_logps for scorer in self.scorers):
            tick = time.perf_counter()
            policy = context.policy
            was_training = policy.training
            policy.eval()
            with torch.no_grad():
                shared = context.pair_logps(policy, batch)
            policy.train(was_training)
            shared["reference"] = reference_logps(batch)  # type: ignore[assignment]
            timings["policy_forward"] = timings.get("policy_forward", 0.0) + time.perf_counter() - tick
        values = {}
        for scorer in self.scorers:
            tick = time.perf_counter()
            values[scorer.name] = scorer.score_batch(context, batch, shared).detach().double().cpu().numpy()
            timings[scorer.name] = timings.get(scorer.name, 0.0) + time.perf_counter() - tick
        return values
