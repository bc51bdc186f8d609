"""Loading pairs: local files, hub-dataset row mappings, and errors that name the file, row and key."""

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from prefalign.data.datamodule import PreferenceDataModule, prepare_split
from prefalign.data.records import DataError, PreferencePair
from prefalign.data.sources import (
    HHRLHFSource,
    LocalSource,
    TLDRSource,
    UltraFeedbackSource,
    parse_hh_transcript,
    read_rows,
)
from prefalign.data.tokenization import PairTokenizer


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


ROWS = [
    {"pair_id": "a", "prompt": "2+2?", "chosen": "4", "rejected": "5", "score_chosen": 9, "score_rejected": 2, "src": "x"},
    {"prompt": [{"role": "user", "content": "Hi"}], "chosen": [{"role": "assistant", "content": "Hello"}],
     "rejected": [{"role": "assistant", "content": "Go away"}]},
]


def test_jsonl_json_and_parquet_give_the_same_pairs(tmp_path):
    jsonl = write_jsonl(tmp_path / "d.jsonl", ROWS)
    (tmp_path / "d.json").write_text(json.dumps(ROWS))
    flat = [{k: v for k, v in ROWS[0].items()}]
    pq.write_table(pa.Table.from_pylist(flat), tmp_path / "d.parquet")
    from_jsonl = LocalSource(str(jsonl), str(jsonl)).load("train")
    from_json = LocalSource(str(tmp_path / "d.json"), str(jsonl)).load("train")
    assert [p.to_dict() for p in from_jsonl] == [p.to_dict() for p in from_json]
    first = from_jsonl[0]
    assert first.pair_id == "a" and first.scores == {"score_chosen": 9.0, "score_rejected": 2.0}
    assert first.metadata == {"src": "x"}  # unknown columns are carried as metadata
    # no pair_id: a stable content hash
    assert from_jsonl[1].pair_id == LocalSource(str(jsonl), str(jsonl)).load("train")[1].pair_id
    from_parquet = LocalSource(str(tmp_path / "d.parquet"), str(jsonl)).load("train")
    assert from_parquet[0].to_dict() == first.to_dict()


def test_malformed_jsonl_names_file_and_line(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps(ROWS[0]) + "\n{not json\n")
    with pytest.raises(DataError, match=r"bad\.jsonl:2: malformed JSON"):
        list(read_rows(path))


def test_missing_column_names_the_key(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [{"prompt": "x", "chosen": "y"}])
    with pytest.raises(DataError, match=r"d\.jsonl:1: missing key 'rejected'"):
        LocalSource(str(path), str(path)).load("train")


def test_column_mapping(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [{"q": "x", "good": "y", "bad": "z"}])
    pairs = LocalSource(str(path), str(path), columns={"prompt": "q", "chosen": "good", "rejected": "bad"}).load("val")
    assert (pairs[0].prompt, pairs[0].chosen, pairs[0].rejected) == ("x", "y", "z")
    assert pairs[0].metadata == {}


def test_wrong_types_are_reported(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [{"prompt": 3, "chosen": "y", "rejected": "z"}])
    with pytest.raises(DataError, match=r"d\.jsonl:1: key 'prompt' must be a string or a list"):
        LocalSource(str(path), str(path)).load("train")
    path = write_jsonl(tmp_path / "e.jsonl", [{"prompt": [{"role": "user"}], "chosen": "y", "rejected": "z"}])
    with pytest.raises(DataError, match=r"e\.jsonl:1: key 'prompt' message 0"):
        LocalSource(str(path), str(path)).load("train")


def test_unsupported_file_type(tmp_path):
    path = tmp_path / "d.csv"
    path.write_text("a,b")
    with pytest.raises(DataError, match="unsupported file type"):
        list(read_rows(path))


def test_validation_split_held_out_from_training_file(tmp_path):
    rows = [{"prompt": f"p{i}", "chosen": "a", "rejected": "b"} for i in range(20)]
    path = write_jsonl(tmp_path / "d.jsonl", rows)
    source = LocalSource(str(path), val_fraction=0.1)
    train, val = source.load("train"), source.load("val")
    assert len(train) == 18 and len(val) == 2
    assert {p.prompt for p in train}.isdisjoint({p.prompt for p in val})


def test_drops_are_counted_and_reported(tokenizer):
    pairs = [
        PreferencePair("ok", "q", "a", "b"),
        PreferencePair("empty-prompt", "  ", "a", "b"),
        PreferencePair("empty-completion", "q", "", "b"),
        PreferencePair("same", "q", "a", "a"),
        PreferencePair("ok", "q2", "c", "d"),  # repeated id
        PreferencePair("long", "q", "a " * 100, "b"),
    ]
    kept, tokens, report = prepare_split(pairs, PairTokenizer(tokenizer, max_length=64, max_prompt_length=48), "train")
    assert [p.pair_id for p in kept] == ["ok", "long"]
    assert report["dropped"] == {
        "empty_prompt": 1, "empty_completion": 1, "identical": 1, "identical_after_truncation": 0, "duplicate_id": 1
    }
    assert report["dropped_pair_ids"]["identical"] == ["same"]
    assert report["truncated"] == {"prompt": 0, "chosen": 1, "rejected": 0}
    assert report["truncated_pair_ids"] == ["long"]
    assert report["loaded"] == 6 and report["kept"] == 2


def test_strict_mode_raises_with_pair_ids(tokenizer):
    pairs = [PreferencePair("ok", "q", "a", "b"), PreferencePair("same", "q", "a", "a")]
    with pytest.raises(DataError, match=r"strict.*identical: \['same'\]"):
        prepare_split(pairs, PairTokenizer(tokenizer), "train", strict=True)


def test_datamodule_restrict_and_batches(tokenizer, tmp_path):
    rows = [{"pair_id": f"id{i}", "prompt": f"q{i}", "chosen": "yes", "rejected": "no"} for i in range(10)]
    path = write_jsonl(tmp_path / "d.jsonl", rows)
    dm = PreferenceDataModule(LocalSource(str(path), str(path)), tokenizer, batch_size=4, max_train_pairs=8)
    dm.setup()
    assert len(dm.datasets["train"]) == 8 and len(dm.datasets["val"]) == 10
    dm.restrict("train", {"id1", "id3"})
    assert [p.pair_id for p in dm.pairs["train"]] == ["id1", "id3"]
    batch = next(iter(dm.train_dataloader()))
    assert sorted(batch["pair_ids"]) == ["id1", "id3"]
    with pytest.raises(DataError, match="not in the data"):
        dm.restrict("train", {"id9"})


def test_ultrafeedback_row():
    row = {
        "prompt": "Hi",
        "prompt_id": "abc",
        "chosen": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}],
        "rejected": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "No"}],
        "score_chosen": 8.0,
        "score_rejected": 3.0,
    }
    pair = UltraFeedbackSource().convert(row, "uf row 0")
    assert pair.pair_id == "abc"
    assert pair.prompt == [{"role": "user", "content": "Hi"}]
    assert pair.chosen == [{"role": "assistant", "content": "Hello"}]
    assert pair.scores == {"score_chosen": 8.0, "score_rejected": 3.0}


def test_hh_prompt_is_the_prefix_up_to_the_last_assistant_turn():
    chosen = "\n\nHuman: Hi\n\nAssistant: Hello!\n\nHuman: How are you?\n\nAssistant: Fine, thanks."
    rejected = "\n\nHuman: Hi\n\nAssistant: Hello!\n\nHuman: How are you?\n\nAssistant: Go away."
    pair = HHRLHFSource().convert({"chosen": chosen, "rejected": rejected}, "hh row 0")
    assert pair.prompt == [
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello!"},
        {"role": "user", "content": "How are you?"},
    ]
    assert pair.chosen == [{"role": "assistant", "content": "Fine, thanks."}]
    assert pair.rejected == [{"role": "assistant", "content": "Go away."}]
    with pytest.raises(DataError, match="hh row 1: not an HH-RLHF transcript"):
        parse_hh_transcript("no turns here", "hh row 1")


def test_tldr_row():
    row = {
        "info": {"id": "t3_x", "post": "Long story.", "title": "Help", "subreddit": "advice"},
        "summaries": [{"text": "first"}, {"text": "second"}],
        "choice": 1,
    }
    pair = TLDRSource().convert(row, "tldr row 0")
    assert pair.prompt == "SUBREDDIT: r/advice\nTITLE: Help\nPOST: Long story.\nTL;DR:"
    assert (pair.chosen, pair.rejected) == (" second", " first")
