"""Input that would silently change a run is refused or reported: text that is not valid Unicode, negative sizes,
malformed selections, training pairs that are also validation pairs, and secrets on the command line."""

from __future__ import annotations

import json
import logging
import re

import pytest
from hydra import compose, initialize_config_dir

from prefalign.data.datamodule import split_pairs
from prefalign.data.records import DataError, pairs_fingerprint
from prefalign.data.sources import LocalSource
from prefalign.evaluation.benchmarks import BuiltinBenchmark
from prefalign.secret_guard import REDACTED, redact_run_folder
from tests.data.test_bad_input import located, row, write_jsonl
from tests.data.test_curriculum import datamodule, source  # noqa: F401  (source is a fixture)
from tests.test_cli import ROOT

# -- text that is not valid Unicode -----------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["d.jsonl", "d.json"])
def test_a_lone_surrogate_is_refused_naming_file_line_and_key(tmp_path, name):
    # "\ud800" is valid JSON but no Unicode text: UTF-8 cannot encode it (a tokenizer or a hash fails on it later)
    broken = row(1, chosen=[{"role": "assistant", "content": "ok \ud800 then"}])
    path = tmp_path / name
    if name.endswith(".jsonl"):
        path.write_text(json.dumps(row(0)) + "\n" + json.dumps(broken) + "\n")
        where = ":2"
    else:
        path.write_text(json.dumps([row(0), broken]))
        where = ": row 1"
    with pytest.raises(DataError, match=located(path, where) + re.escape(": key 'chosen[0].content' holds text that is not "
                                                                        "valid Unicode (surrogates not allowed: '\\ud800'")):
        LocalSource(str(path), str(path)).load("train")


# -- negative sizes ---------------------------------------------------------------------------------------------


def test_negative_sizes_are_refused_naming_the_key(source, tmp_path):  # noqa: F811
    assert len(split_pairs(source, "train", 4)) == 4
    with pytest.raises(ValueError, match=r"data\.max_train_pairs must be a whole number >= 1 or null, got -5"):
        split_pairs(source, "train", -5)  # was: all pairs but the last 5
    for key, value in (("max_val_pairs", -1), ("batch_size", 0), ("eval_batch_size", -16), ("num_workers", -2)):
        minimum = 0 if key == "num_workers" else 1
        with pytest.raises(ValueError, match=rf"data\.{key} must be a whole number >= {minimum}"):
            datamodule(source, **{key: value})
    with pytest.raises(ValueError, match=r"data\.flip_fraction must be a fraction in \[0, 1\), got -0\.2"):
        datamodule(source, flip_fraction=-0.2)
    with pytest.raises(ValueError, match=r"data\.source\.val_fraction must be a fraction in \[0, 1\], got -0\.1"):
        LocalSource(str(tmp_path / "pairs.jsonl"), val_fraction=-0.1)
    with pytest.raises(ValueError, match=r"bench\.limit must be a whole number >= 1 or null, got -5"):
        BuiltinBenchmark(limit=-5)


# -- selection files --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kept", "problem"),
    [
        (["p0", "p2", "p0", "p2"], "'kept' repeats 2 pair ids, e.g. ['p0', 'p2']"),
        (None, "'kept' must be a list of pair ids, got NoneType"),
        ("p0", "'kept' must be a list of pair ids, got str"),
        (["p0", None, 3], "'kept' holds 2 ids that are not strings, e.g. [None, 3]"),
    ],
    ids=["duplicates", "null", "string", "not-strings"],
)
def test_a_malformed_selection_is_refused_naming_its_file(source, tmp_path, kept, problem):  # noqa: F811
    selection = tmp_path / "selection.json"
    record = {"kept": kept, "rule": "topk", "data_fingerprint": pairs_fingerprint(source.load("train"))}
    selection.write_text(json.dumps(record))
    with pytest.raises(DataError, match=re.escape(f"data.selection: {selection}: {problem}")):
        datamodule(source, selection=str(selection))


def test_a_selection_whose_count_is_not_its_list_is_refused(source, tmp_path):  # noqa: F811
    selection = tmp_path / "selection.json"
    record = {"kept": ["p0", "p1"], "kept_count": 20, "rule": "topk", "data_fingerprint": pairs_fingerprint(source.load("train"))}
    selection.write_text(json.dumps(record))
    with pytest.raises(DataError, match=re.escape(f"{selection}: 'kept_count' is 20 but 'kept' lists 2 pair ids")):
        datamodule(source, selection=str(selection))


# -- the same pairs in training and validation ------------------------------------------------------------------


def test_training_pairs_with_a_validation_pairs_content_are_counted_and_refused_when_strict(tmp_path, caplog):
    train = write_jsonl(tmp_path / "train.jsonl", [row(i) for i in range(6)])
    # v1 is p2 under another id; v2 has p3's prompt and completions swapped (another pair)
    val = write_jsonl(tmp_path / "val.jsonl", [row(9, pair_id="v0"), row(2, pair_id="v1"),
                                               row(3, pair_id="v2", chosen="no", rejected="yes")])
    leaky = LocalSource(str(train), str(val))
    with caplog.at_level(logging.WARNING, logger="prefalign.data.datamodule"):
        dm = datamodule(leaky)
    assert dm.report["same_content_in_train_and_val"] == {"count": 1, "train_pair_ids": ["p2"], "val_pair_ids": ["v1"]}
    assert "1 of 6 training pairs have the content (prompt, chosen, rejected) of a validation pair" in caplog.text
    with pytest.raises(DataError, match=r"data\.strict=true and 1 of 6 training pairs .* train \['p2'\] = val \['v1'\]"):
        datamodule(leaky, strict=True)
    clean = LocalSource(str(train), str(write_jsonl(tmp_path / "clean.jsonl", [row(9)])))
    assert datamodule(clean, strict=True).report["same_content_in_train_and_val"]["count"] == 0


# -- secrets on the command line --------------------------------------------------------------------------------


def test_a_secret_override_is_refused_before_hydra_writes_anything(tmp_path):
    from hydra._internal.callbacks import Callbacks  # what Hydra's run calls, with its handling of callback errors

    run = tmp_path / "run"
    overrides = ["+judge.client.api_key=sk-test0123456789abcdef", "scores=x", f"hydra.run.dir={run}"]
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("select", overrides=overrides, return_hydra_config=True)
        plain = compose("select", overrides=overrides[1:], return_hydra_config=True)
    Callbacks(plain).on_run_start(config=plain)  # no secret: nothing happens
    with pytest.raises(SystemExit, match=r"^judge\.client\.api_key: a secret .* would be written into the run folder") as error:
        Callbacks(cfg).on_run_start(config=cfg)
    assert "sk-test" not in str(error.value) and "OPENAI_API_KEY" in str(error.value)
    assert not run.exists()


def test_an_override_that_unsets_a_key_holds_no_secret():
    from prefalign.secret_guard import find_secrets

    for value in ("null", "", "???"):
        overrides = [f"+judge.client.api_key={value}", "scores=x"]
        with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
            cfg = compose("select", overrides=overrides, return_hydra_config=True)
        assert find_secrets(cfg) == {}, value


def test_a_secret_that_reached_a_run_folder_is_redacted(tmp_path):
    job = tmp_path / "sweep" / "0_x"
    (job / ".hydra").mkdir(parents=True)
    (job / ".hydra" / "overrides.yaml").write_text("- +judge.client.api_key=sk-one\n- model=tiny_llama\n")
    (job / ".hydra" / "config.yaml").write_text("judge:\n  client:\n    api_key: sk-one\nseed: 1\n")
    (job / ".hydra" / "hydra.yaml").write_text("hydra:\n  job:\n    override_dirname: +judge.client.api_key=sk-one\n")
    (job.parent / "multirun.yaml").write_text("hydra:\n  overrides:\n    task:\n    - +judge.client.api_key=sk-one,sk-two\n")
    rewritten = redact_run_folder(job, ".hydra", ["sk-one", "sk-two"])
    assert len(rewritten) == 4
    for path in rewritten:
        text = path.read_text()
        assert "sk-" not in text and REDACTED in text, path
    assert "seed: 1" in (job / ".hydra" / "config.yaml").read_text()
