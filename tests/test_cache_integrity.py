"""Cache integrity: entries are data with checksums, keyed by content, and a cache may move or be read-only.

Nothing read from a cache runs code (a pickle where the reference log-probs are read never unpickles); a policy's
fingerprint is its content, so that other weights copied over it with their times kept are scored again; a truncated
or garbled entry of every kind (reference log-probs, score shards and merged scores, warm-up and auxiliary policies)
is named, moved aside and computed again; a cache copied elsewhere and made read-only serves every finished entry
without writing anything; and weights follow the umask like every other file.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import stat
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest
import torch

from prefalign.atomic import CHECKSUMS, CorruptEntryError, atomic_entry, entry_files, file_record, write_checksums
from prefalign.data.datamodule import PreferenceDataModule
from prefalign.data.sources import LocalSource
from prefalign.keys import training_key
from prefalign.models import TinyModel, checkpoint_fingerprint, default_cache_dir, load_checkpoint, save_policy
from prefalign.reference import cached_reference_logps
from tests.conftest import tiny_model
from tests.test_configs import compose_with

# a tiny run: 16 training pairs, 8 validation pairs; the tokenizer comes from the shared cache (converted once)
SMALL = ["model=tiny_llama", f"model.cache_dir={default_cache_dir()}", "data.max_train_pairs=16", "data.max_val_pairs=8",
         "optimizer.lr=1e-3", "logger=csv"]


def config(primary: str, tmp_path: Path, cache: Path, *overrides: str):
    return compose_with(primary, [*SMALL, f"paths.cache_dir={cache}", *overrides], tmp_path / "out")


def listing(folder: Path) -> dict[str, tuple[int, int, int]]:
    """Every file and folder under ``folder`` with its size, mode and modification time (ns)."""
    return {
        str(path.relative_to(folder)): (path.lstat().st_size, path.lstat().st_mode, path.lstat().st_mtime_ns)
        for path in [folder, *folder.rglob("*")]
    }


def truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def garble(path: Path) -> None:
    """Flip bytes in the middle of the file: same size, other content."""
    data = bytearray(path.read_bytes())
    middle = len(data) // 2
    data[middle : middle + 64] = bytes(255 - byte for byte in data[middle : middle + 64])
    path.write_bytes(bytes(data))


CORRUPTIONS = {"truncated": truncate, "garbled": garble}


# -- a read-only copy of a cache at another path ------------------------------------------------------------------


def test_a_read_only_copy_of_a_cache_at_another_path_serves_every_entry(tmp_path):
    from prefalign.stages.pipeline import run_selection_pipeline

    overrides = ("select=lossdiff_irm", "select.keep_fraction=0.5", "pipeline.shard_size=8")
    first = run_selection_pipeline(config("train", tmp_path / "first", tmp_path / "cache", *overrides))
    assert not first["selection"]["warmup_from_cache"] and not first["selection"]["scores_from_cache"]

    copy = tmp_path / "elsewhere" / "cache"
    shutil.copytree(tmp_path / "cache", copy, symlinks=True)
    for path in [copy, *copy.rglob("*")]:  # chmod -R a-w
        path.chmod(stat.S_IMODE(path.stat().st_mode) & ~0o222)
    before = listing(copy)
    try:
        again = run_selection_pipeline(config("train", tmp_path / "again", copy, *overrides))
    finally:
        after = listing(copy)
        for path in [copy, *copy.rglob("*")]:
            path.chmod(stat.S_IMODE(path.stat().st_mode) | 0o200)
    # root writes through chmod: that nothing under the copy was created or changed is the check
    assert after == before
    assert again["selection"]["warmup_from_cache"] and again["selection"]["scores_from_cache"]
    assert again["run"]["reference_from_cache"] == {"train": True, "val": True}
    assert again["selection"]["kept_fraction"] == first["selection"]["kept_fraction"]
    assert again["train/loss"] == first["train/loss"]


# -- reference log-probs ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def pairs(tokenizer, tmp_path_factory):
    """Five pairs, tokenised, and a tiny model to compute their reference log-probs with."""
    folder = tmp_path_factory.mktemp("pairs")
    rows = [{"pair_id": f"p{i}", "prompt": f"Say {i}.", "chosen": f"{i}.", "rejected": f"No, {i + 1}."} for i in range(5)]
    (folder / "train.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    source = LocalSource(str(folder / "train.jsonl"), str(folder / "train.jsonl"))
    datamodule = PreferenceDataModule(source, tokenizer, eval_batch_size=2)
    datamodule.setup()
    return datamodule, tiny_model("llama")


def reference(pairs, cache: Path) -> tuple[dict, bool]:
    datamodule, model = pairs
    return cached_reference_logps(
        reference_fingerprint="tiny", dataset=datamodule.datasets["train"], loader=datamodule.eval_loader("train"),
        cache_dir=cache, load_model=lambda: model,
    )


class Payload:
    """Unpickled, it creates ``marker``: what a payload that runs any code could do."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_a_pickle_placed_in_the_reference_cache_never_runs(pairs, tmp_path, caplog):
    cache, marker = tmp_path / "cache", tmp_path / "marker"
    expected, hit = reference(pairs, cache)
    assert not hit
    # an attacker with write access to a shared cache puts a pickle in place of every file the entry holds (and a
    # checksum record that matches it), and one where an older prefalign read its pickled entries
    (entry,) = (cache / "reference_logps").iterdir()
    files = entry_files(entry) if entry.is_dir() else [entry]
    for path in [*files, entry.with_suffix(".pt")]:
        torch.save({"logps": Payload(marker)}, path)
    if entry.is_dir():
        write_checksums(entry / CHECKSUMS, files)
    logps, hit = reference(pairs, cache)
    assert not marker.exists()
    assert not hit and all(torch.equal(logps[name], expected[name]) for name in expected)  # computed again
    assert f"{entry}/logps.safetensors: is not a readable safetensors file" in caplog.text
    assert reference(pairs, cache)[1]  # and cached again


def nan_values(entry: Path) -> None:
    """Plausible-looking file, matching checksums, values that are not numbers."""
    from safetensors.torch import load_file, save_file

    tensors = load_file(entry / "logps.safetensors")
    tensors["chosen"][1] = float("nan")
    save_file(tensors, entry / "logps.safetensors")
    write_checksums(entry / CHECKSUMS, entry_files(entry))


def other_pairs(entry: Path) -> None:
    (entry / "pair_ids.json").write_text(json.dumps(["p0", "p1", "p2", "p3", "x"]))
    write_checksums(entry / CHECKSUMS, entry_files(entry))


@pytest.mark.parametrize(
    ("corrupt", "named", "problem"),
    [
        (truncate, "logps.safetensors", "its sha256 differs"),
        (garble, "logps.safetensors", "its sha256 differs"),
        (nan_values, "logps.safetensors", "tensor 'chosen' holds 1 non-finite values (pairs ['p1'])"),
        (other_pairs, "pair_ids.json", "holds other pairs than the data"),
        (lambda entry: (entry / CHECKSUMS).unlink(), CHECKSUMS, "no checksum record: the entry is partial, or"),
    ],
    ids=["truncated", "garbled", "nan", "other_pairs", "no_checksums"],
)
def test_a_corrupt_reference_entry_is_named_moved_aside_and_computed_again(pairs, tmp_path, caplog, corrupt, named, problem):
    cache = tmp_path / "cache"
    expected, _ = reference(pairs, cache)
    (entry,) = (cache / "reference_logps").iterdir()
    if corrupt in CORRUPTIONS.values():
        corrupt(entry / "logps.safetensors")
    else:
        corrupt(entry)
    logps, hit = reference(pairs, cache)
    assert not hit and all(torch.equal(logps[name], expected[name]) for name in expected)
    assert f"{entry / named}: {problem}" in caplog.text
    (moved,) = (cache / "corrupt" / "reference_logps").iterdir()
    assert moved.name.startswith(entry.name) and (moved / entry.name).is_dir()
    assert reference(pairs, cache)[1]  # the next run reads the new entry


# -- policies: content, not timestamps ------------------------------------------------------------------------------


def save_tiny_policy(folder: Path, seed: int, tokenizer) -> Path:
    source = TinyModel(name="tiny_llama", architecture="llama", seed=seed)
    return save_policy(source.load_model(), tokenizer, folder)


def test_other_weights_copied_over_a_policy_with_its_times_kept_are_scored_again(tokenizer, tmp_path, caplog):
    from prefalign.stages.score import run_scoring

    policy = save_tiny_policy(tmp_path / "policy", 0, tokenizer)
    other = save_tiny_policy(tmp_path / "other", 1, tokenizer)
    cache = tmp_path / "cache"

    def score(name: str) -> dict:
        return run_scoring(config("score", tmp_path / name, cache, f"policy={policy}", "scores=[logp_gap]"))

    first = score("first")
    assert not first["from_cache"] and score("same")["from_cache"]
    # as cp -p, rsync -a or tar would: the same size, the old modification time
    weights = policy / "model.safetensors"
    times = weights.stat()
    assert (other / "model.safetensors").stat().st_size == times.st_size
    shutil.copyfile(other / "model.safetensors", weights)
    os.utime(weights, ns=(times.st_atime_ns, times.st_mtime_ns))
    swapped = score("swapped")
    assert not swapped["from_cache"]
    assert swapped["statistics"]["logp_gap"] != first["statistics"]["logp_gap"]
    record = policy / CHECKSUMS
    assert f"policy folder {policy} was changed after it was written (not as its checksum record {record} says: model.safetensors)" in caplog.text
    assert score("swapped_again")["from_cache"]  # keyed by what it holds now


def test_a_policys_fingerprint_is_its_content_wherever_it_lies(tokenizer, tmp_path):
    policy = save_tiny_policy(tmp_path / "policy", 0, tokenizer)
    assert (policy / CHECKSUMS).is_file()  # recorded when written
    copy = tmp_path / "elsewhere" / "policy"
    shutil.copytree(policy, copy)  # new times, new path, same bytes
    assert checkpoint_fingerprint(copy) == checkpoint_fingerprint(policy) == checkpoint_fingerprint(tmp_path / "policy")
    # a key that names a checkpoint holds its content: the same for the copy, another for other weights
    cfg = compose_with("train", ["model=tiny_llama", f"model.init_from={policy}"], tmp_path / "out")
    moved = compose_with("train", ["model=tiny_llama", f"model.init_from={copy}"], tmp_path / "out")
    assert training_key(cfg, "policy", "data") == training_key(moved, "policy", "data")
    garble(copy / "config.json")
    assert checkpoint_fingerprint(copy) != checkpoint_fingerprint(policy)
    assert training_key(cfg, "policy", "data") != training_key(moved, "policy", "data")


def test_a_policy_with_unreadable_weights_is_named(tokenizer, tmp_path):
    policy = save_tiny_policy(tmp_path / "policy", 0, tokenizer)
    truncate(policy / "model.safetensors")
    with pytest.raises(CorruptEntryError, match=f"{policy}: its weights cannot be read"):
        load_checkpoint(tmp_path)


def test_weights_follow_the_umask_like_every_other_file(tokenizer, tmp_path):
    previous = os.umask(0o002)  # a cache shared by a group
    try:
        policy = save_tiny_policy(tmp_path / "policy", 0, tokenizer)
        auxiliary = atomic_entry(tmp_path / "auxiliary", tiny_model("llama").save_pretrained)
    finally:
        os.umask(previous)
    files = [*policy.rglob("*"), *auxiliary.rglob("*")]
    assert {path.name for path in files} >= {"model.safetensors", "config.json", CHECKSUMS}
    assert {path.name: oct(stat.S_IMODE(path.stat().st_mode)) for path in files} == {path.name: "0o664" for path in files}


# -- scores: shards and the merged file ------------------------------------------------------------------------------


def score_config(tmp_path: Path, cache: Path):
    return config("score", tmp_path, cache, "scores=[random]", "shard_size=8")  # 2 shards


@pytest.fixture(scope="module")
def scored(tmp_path_factory):
    """A finished scores entry, to be copied and damaged."""
    from prefalign.stages.score import run_scoring

    folder = tmp_path_factory.mktemp("scored")
    summary = run_scoring(score_config(folder, folder / "cache"))
    assert not summary["from_cache"]
    return folder / "cache", Path(summary["cache_entry"]).name, pd.read_parquet(summary["scores_file"])


def missing_column(shard: Path) -> None:
    """A shard without its score column, with a checksum record that matches."""
    pq.write_table(pq.read_table(shard, columns=["pair_id"]), shard)
    write_checksums(file_record(shard), [shard])


@pytest.mark.parametrize(
    ("where", "corrupt", "problem"),
    [
        ("scores.parquet", truncate, "its sha256 differs"),
        ("scores.parquet", garble, "its sha256 differs"),
        ("shards/shard-0000000-0000008.parquet", truncate, "its sha256 differs"),
        ("shards/shard-0000000-0000008.parquet", garble, "its sha256 differs"),
        ("shards/shard-0000000-0000008.parquet", missing_column, "this score shard has the columns ['pair_id']"),
    ],
    ids=["merged-truncated", "merged-garbled", "shard-truncated", "shard-garbled", "shard-missing-column"],
)
def test_corrupt_scores_are_named_moved_aside_and_computed_again(scored, tmp_path, caplog, where, corrupt, problem):
    from prefalign.stages.score import run_scoring

    pristine, key, expected = scored
    cache = tmp_path / "cache"
    shutil.copytree(pristine, cache)
    entry = cache / "scores" / key
    if where.startswith("shards/"):  # a run killed before it merged its shards: they are read to resume
        (entry / "scores.parquet").unlink()
    corrupt(entry / where)
    summary = run_scoring(score_config(tmp_path, cache))
    assert not summary["from_cache"]
    assert f"corrupt cache entry {entry / where}: {problem}" in caplog.text
    assert len(list((cache / "corrupt" / "scores").iterdir())) == 1
    pd.testing.assert_frame_equal(pd.read_parquet(summary["scores_file"]), expected)
    assert run_scoring(score_config(tmp_path / "next", cache))["from_cache"]


# -- warm-up and auxiliary policies ----------------------------------------------------------------------------------


def warmup_config(tmp_path: Path, cache: Path):
    return config("train", tmp_path, cache, "select=lossdiff_irm")


@pytest.fixture(scope="module")
def warmed_up(tmp_path_factory):
    """A finished warm-up entry, to be copied and damaged."""
    from prefalign.stages.pipeline import cached_warmup

    folder = tmp_path_factory.mktemp("warmed_up")
    warm_dir, hit = cached_warmup(warmup_config(folder, folder / "cache"))
    assert not hit and (warm_dir / CHECKSUMS).is_file() and not (warm_dir / "checkpoints").exists()
    return folder / "cache", warm_dir.name


@pytest.mark.parametrize("corruption", CORRUPTIONS)
def test_a_corrupt_warm_up_is_named_moved_aside_and_trained_again(warmed_up, tmp_path, caplog, corruption):
    from prefalign.stages.pipeline import cached_warmup

    pristine, key = warmed_up
    cache = tmp_path / "cache"
    shutil.copytree(pristine, cache)
    weights = cache / "warmup" / key / "policy" / "model.safetensors"
    CORRUPTIONS[corruption](weights)
    warm_dir, hit = cached_warmup(warmup_config(tmp_path, cache))
    assert not hit and warm_dir == cache / "warmup" / key
    assert f"corrupt cache entry {warm_dir}: {weights}: its sha256 differs" in caplog.text
    (moved,) = (cache / "corrupt" / "warmup").iterdir()
    assert (moved / key / "policy" / "model.safetensors").is_file()  # kept for a look
    assert cached_warmup(warmup_config(tmp_path, cache))[1]  # the next run finds the new one
    load_checkpoint(warm_dir)


@pytest.fixture(scope="module")
def lossdiff(tmp_path_factory):
    """LossDiff's scorer and a scoring context of the tiny run (its cache folder set by each test)."""
    from prefalign.run_setup import setup_run
    from prefalign.scoring.base import ScoringContext
    from prefalign.scoring.config import build_scorers

    folder = tmp_path_factory.mktemp("lossdiff")
    cfg = config("score", folder, folder / "cache", "scores=[lossdiff]")
    setup = setup_run(cfg)
    policy = setup.load_model()
    setup.attach_reference(policy)
    (scorer,) = build_scorers(cfg, ["lossdiff"])
    context = ScoringContext(
        policy=policy, policy_fingerprint="tiny", loss=setup.loss, datamodule=setup.datamodule, source=setup.source,
        cache_dir=setup.cache_dir, work_dir=folder, logp_settings=setup.logp_settings, seed=cfg.seed, cfg=cfg,
    )
    return scorer, context


@pytest.mark.parametrize("corruption", CORRUPTIONS)
def test_a_corrupt_auxiliary_model_is_named_moved_aside_and_trained_again(lossdiff, tmp_path, caplog, corruption):
    scorer, context = lossdiff
    context = dataclasses.replace(context, cache_dir=tmp_path / "cache")
    caplog.set_level("INFO", logger="prefalign.scoring.proxies")
    scorer.prepare(context)
    (entry,) = (context.cache_dir / "auxiliary").iterdir()
    assert (entry / CHECKSUMS).is_file()
    CORRUPTIONS[corruption](entry / "model.safetensors")
    caplog.clear()
    scorer.prepare(context)
    assert f"corrupt cache entry {entry}: {entry / 'model.safetensors'}: its sha256 differs" in caplog.text
    assert "auxiliary model from cache" not in caplog.text  # trained again
    assert len(list((context.cache_dir / "corrupt" / "auxiliary").iterdir())) == 1
    caplog.clear()
    scorer.prepare(context)
    assert f"lossdiff: auxiliary model from cache {entry}" in caplog.text
    scorer.release()
