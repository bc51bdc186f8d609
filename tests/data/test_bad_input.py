"""Bad input: each edge case either raises a DataError naming the file, row and key, or is dropped
and counted in ``data_report.json``."""

import gzip
import json
import re

import pytest

from prefalign.atomic import write_json
from prefalign.data.datamodule import PreferenceDataModule, prepare_split
from prefalign.data.records import DataError, PreferencePair
from prefalign.data.sources import LocalSource, UltraFeedbackSource, read_rows
from prefalign.data.tokenization import PairTokenizer
from tests.data.test_tokenization import CharTokenizer


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def row(index: int, **overrides) -> dict:
    return {"pair_id": f"p{index}", "prompt": f"q{index}", "chosen": "yes", "rejected": "no", **overrides}


def located(path, where: str) -> str:
    """The start of a message about ``path``: the full path, then ``where`` (``:2`` or ``: row 1``)."""
    return re.escape(f"{path}{where}")


# -- encoding ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["bad.jsonl", "bad.jsonl.gz"])
def test_non_utf8_jsonl_names_file_line_and_byte(tmp_path, name):
    good = json.dumps(row(0)).encode()
    bad = b'{"prompt": "caf\xe9", "chosen": "a", "rejected": "b"}'  # Latin-1, not UTF-8
    payload = good + b"\n" + bad + b"\n"
    path = tmp_path / name
    path.write_bytes(gzip.compress(payload) if name.endswith(".gz") else payload)
    with pytest.raises(DataError, match=located(path, ":2: not valid UTF-8") + r" \(byte 0xe9 at byte column 16\)"):
        LocalSource(str(path), str(path)).load("train")


def test_non_utf8_json_names_file_and_line(tmp_path):
    path = tmp_path / "bad.json"
    text = json.dumps([row(0), row(1, prompt="CAFE")], indent=1).encode()
    assert text.count(b"CAFE") == 1
    path.write_bytes(text.replace(b"CAFE", b"caf\xe9"))
    line = text[: text.index(b"CAFE")].count(b"\n") + 1
    assert line > 1
    with pytest.raises(DataError, match=located(path, f":{line}: not valid UTF-8")):
        list(read_rows(path))


def test_utf8_text_is_read_unchanged(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [row(0, prompt="café ✓ 你好")])
    assert LocalSource(str(path), str(path)).load("train")[0].prompt == "café ✓ 你好"


# -- metadata ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("metadata", ["a note", [["src", "x"]], 3, True])
def test_metadata_that_is_not_an_object_names_file_row_and_key(tmp_path, metadata):
    path = write_jsonl(tmp_path / "d.jsonl", [row(0), row(1, metadata=metadata)])
    kind = type(metadata).__name__
    with pytest.raises(DataError, match=located(path, f":2: key 'metadata' must be an object, got {kind}")):
        LocalSource(str(path), str(path)).load("train")
    json_path = tmp_path / "d.json"
    json_path.write_text(json.dumps([row(0), row(1, metadata=metadata)]))
    with pytest.raises(DataError, match=located(json_path, ": row 1: key 'metadata' must be an object")):
        LocalSource(str(json_path), str(json_path)).load("train")


def test_metadata_object_or_null_is_accepted(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [row(0, metadata={"family": "add"}, src="x"), row(1, metadata=None)])
    first, second = LocalSource(str(path), str(path)).load("train")
    assert first.metadata == {"family": "add", "src": "x"}
    assert second.metadata == {}


# -- chat roles -------------------------------------------------------------------------------------------------

USER = {"role": "user", "content": "Hi"}
ANSWER = {"role": "assistant", "content": "Hello"}


@pytest.mark.parametrize(
    "overrides, message",
    [
        (
            {"prompt": [{"role": "system", "content": "Be brief."}, {"role": "robot", "content": "Hi"}]},
            "key 'prompt' message 1 has role 'robot'; expected 'system' or 'user' or 'assistant'",
        ),
        ({"chosen": [USER]}, "key 'chosen' message 0 has role 'user'; expected 'assistant'"),
        ({"rejected": [ANSWER, {"role": "system", "content": "x"}]}, "key 'rejected' message 1 has role 'system'"),
        ({"rejected": [{"role": None, "content": "x"}]}, "key 'rejected' message 0 has role None"),
    ],
)
def test_bad_roles_name_file_row_key_and_message(tmp_path, overrides, message):
    path = write_jsonl(tmp_path / "d.jsonl", [row(0, prompt=[USER], chosen=[ANSWER], rejected=[ANSWER]), row(1, **overrides)])
    with pytest.raises(DataError, match=located(path, ":2: ") + re.escape(message)):
        LocalSource(str(path), str(path)).load("train")


def test_bad_role_names_the_files_own_column(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [{"q": "x", "good": [USER], "bad": [ANSWER]}])
    source = LocalSource(str(path), str(path), columns={"prompt": "q", "chosen": "good", "rejected": "bad"})
    with pytest.raises(DataError, match=located(path, ":1: key 'good' message 0 has role 'user'")):
        source.load("train")


def test_all_three_roles_in_a_prompt_are_accepted(tmp_path):
    prompt = [{"role": "system", "content": "Be brief."}, USER, ANSWER, {"role": "user", "content": "And?"}]
    path = write_jsonl(tmp_path / "d.jsonl", [row(0, prompt=prompt, chosen=[ANSWER, ANSWER], rejected="no")])
    pair = LocalSource(str(path), str(path)).load("train")[0]
    assert pair.prompt == prompt and pair.chosen == [ANSWER, ANSWER]


def test_ultrafeedback_completion_that_is_not_split_must_be_the_assistants():
    row_ = {"prompt": "Hi", "chosen": [USER, ANSWER], "rejected": "plain"}
    with pytest.raises(DataError, match=r"uf row 3: key 'chosen' message 0 has role 'user'; expected 'assistant'"):
        UltraFeedbackSource().convert(row_, "uf row 3")


# -- empty and too-small files ----------------------------------------------------------------------------------


@pytest.mark.parametrize("name, content", [("e.jsonl", ""), ("e.jsonl", "\n  \n"), ("e.json", "[]"), ("e.json", '{"data": []}')])
def test_empty_file_is_named(tmp_path, name, content):
    empty = tmp_path / name
    empty.write_text(content)
    good = write_jsonl(tmp_path / "good.jsonl", [row(0)])
    with pytest.raises(DataError, match=located(empty, ": the file holds no pairs")):
        LocalSource(str(empty), str(good)).load("train")
    with pytest.raises(DataError, match=located(empty, ": the file holds no pairs")):
        LocalSource(str(good), str(empty)).load("val")


@pytest.mark.parametrize("n_rows, val_fraction, held_out", [(1, 0.05, 1), (4, 1.0, 4), (3, 0.9, 3)])
def test_file_too_small_for_a_validation_split_points_to_the_keys(tmp_path, n_rows, val_fraction, held_out):
    path = write_jsonl(tmp_path / "d.jsonl", [row(i) for i in range(n_rows)])
    source = LocalSource(str(path), val_fraction=val_fraction)
    expected = (
        located(path, f": {n_rows} pair(s) are too few to hold out a validation split")
        + re.escape(f" (data.source.val_fraction={val_fraction} holds out {held_out}, leaving {n_rows - held_out}")
        + (r".*lower data\.source\.val_fraction" if n_rows > 1 else "")
        + r".*or give a validation file with data\.source\.val_path"
    )
    for split in ("train", "val"):
        with pytest.raises(DataError, match=expected) as error:
            source.load(split)
        # a single pair is always held out, so a lower val_fraction is no advice there
        assert ("lower data.source.val_fraction" in str(error.value)) == (n_rows > 1)


def test_two_pairs_are_enough_to_hold_out_one(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [row(0), row(1)])
    source = LocalSource(str(path))
    assert [p.pair_id for p in source.load("train")] == ["p0"]
    assert [p.pair_id for p in source.load("val")] == ["p1"]


# -- pairs identical as token ids -------------------------------------------------------------------------------

# CharTokenizer: one id per character, "$" is the EOS and "^" the BOS. With its template the prompt "q" is 19 tokens
# (BOS + "<user>q<assistant>"), so with max_length=30 a completion keeps its first 11 tokens.


def char_pair_tokenizer() -> PairTokenizer:
    return PairTokenizer(CharTokenizer(template_writes_bos=False), max_length=30, max_prompt_length=20)


TOKEN_EDGE_PAIRS = [
    PreferencePair("ok", "q", "yes", "no"),
    PreferencePair("cut", "q", "x" * 40 + "A", "x" * 40 + "B"),  # both cut to 11 x's
    PreferencePair("cut-one", "q", "x" * 10 + "$ and more", "x" * 10),  # chosen cut to rejected's 10 x's + EOS
    PreferencePair("eos", "q", "4", "4$"),  # the same ids once the EOS is appended to "4"
    PreferencePair("long-ok", "q", "x" * 40, "y" * 40),  # truncated but still different
]


def test_pairs_identical_as_token_ids_are_dropped_and_counted():
    pair_tokenizer = char_pair_tokenizer()
    assert len(pair_tokenizer.prompt_ids("q")) == 19
    kept, tokens, report = prepare_split(TOKEN_EDGE_PAIRS, pair_tokenizer, "train")
    assert [pair.pair_id for pair in kept] == ["ok", "long-ok"]
    assert report["dropped"] == {
        "empty_prompt": 0, "empty_completion": 0, "identical": 1, "identical_after_truncation": 2, "duplicate_id": 0
    }
    assert report["dropped_pair_ids"] == {"identical": ["eos"], "identical_after_truncation": ["cut", "cut-one"]}
    # dropped pairs are not counted as truncated
    assert report["truncated"] == {"prompt": 0, "chosen": 1, "rejected": 1}
    assert report["truncated_pair_ids"] == ["long-ok"]
    assert all(item.chosen_ids != item.rejected_ids for item in tokens)


def test_strict_mode_raises_on_pairs_identical_after_truncation():
    with pytest.raises(DataError, match=r"data\.strict=true.*identical_after_truncation: \['cut'\]"):
        prepare_split(TOKEN_EDGE_PAIRS[:2], char_pair_tokenizer(), "train", strict=True)


def test_data_report_counts_pairs_identical_as_token_ids(tmp_path):
    train = write_jsonl(tmp_path / "train.jsonl", [pair.to_dict() for pair in TOKEN_EDGE_PAIRS])
    val = write_jsonl(tmp_path / "val.jsonl", [row(0), row(1, chosen="x" * 40 + "A", rejected="x" * 40 + "B")])
    source = LocalSource(str(train), str(val))
    datamodule = PreferenceDataModule(source, CharTokenizer(template_writes_bos=False), max_length=30, max_prompt_length=20)
    datamodule.setup()
    write_json(datamodule.report, tmp_path / "data_report.json")  # as setup_run writes it
    report = json.loads((tmp_path / "data_report.json").read_text())
    assert report["train"]["loaded"] == 5 and report["train"]["kept"] == 2
    assert report["train"]["dropped"]["identical"] == 1
    assert report["train"]["dropped"]["identical_after_truncation"] == 2
    assert report["train"]["dropped_pair_ids"]["identical_after_truncation"] == ["cut", "cut-one"]
    assert report["val"]["dropped"]["identical_after_truncation"] == 1 and report["val"]["kept"] == 1
    assert [pair.pair_id for pair in datamodule.pairs["train"]] == ["ok", "long-ok"]
    assert len(datamodule.datasets["train"]) == 2
    strict = PreferenceDataModule(source, CharTokenizer(template_writes_bos=False), max_length=30, max_prompt_length=20, strict=True)
    with pytest.raises(DataError, match=r"identical_after_truncation: \['cut', 'cut-one'\]"):
        strict.setup()
