"""The stages meet through files: the selection pipeline run by hand gives what ``train.py select=...`` gives;
training on a selection or with per-pair weights; the checks of those files; the papercuts of a new user.

The one-command pipeline runs in a new interpreter, as a user starts it; every other command runs its entry
script's Hydra ``main()`` in this process (:func:`tests.entry.run_cli`)."""

from __future__ import annotations

import json
import shlex
import time

import pandas as pd
import pytest

from tests.entry import run_cli
from tests.test_cli import check, train
from tests.test_pipeline import TOKENIZER

SMALL = ["model=tiny_llama", "data.max_train_pairs=40", "data.max_val_pairs=12", "optimizer.lr=1e-3", "logger=csv"]
METRICS = ("train/loss", "val/loss", "val/rewards/margins", "val/rewards/accuracies", "val/logps/chosen")


def test_stages_by_hand_equal_the_one_command_pipeline(tmp_path):
    cache = f"paths.cache_dir={tmp_path / 'cache'}"
    pipeline = tmp_path / "pipeline"
    # the pipeline in a new interpreter, as a user starts it (the stages by hand below run in this one)
    check(train(*SMALL, cache, TOKENIZER, "select=lossdiff_irm", "select.keep_fraction=0.64", f"hydra.run.dir={pipeline}"))

    # the same stages by hand, in other folders and with a cache of their own (nothing is reused from the pipeline)
    own = [f"paths.cache_dir={tmp_path / 'cache-by-hand'}", TOKENIZER]
    warm, scored, selected, final = (tmp_path / name for name in ("warm", "scored", "selected", "final"))
    check(run_cli("train", *SMALL, *own, "trainer.max_epochs=1", f"hydra.run.dir={warm}"))
    result = run_cli("score", *SMALL, *own, "select=lossdiff_irm", f"policy={warm}", "scores=[lossdiff,irm]",
                     f"hydra.run.dir={scored}")
    assert result.returncode == 0, result.stderr[-3000:]
    result = run_cli("select", f"scores={scored}", "select=lossdiff_irm", "select.keep_fraction=0.64",
                     f"hydra.run.dir={selected}")
    assert result.returncode == 0, result.stderr[-3000:]
    check(run_cli("train", *SMALL, *own, f"data.selection={selected / 'selection.json'}", f"model.init_from={warm}",
                  f"hydra.run.dir={final}"))

    one, by_hand = (json.loads((run / "metrics.json").read_text()) for run in (pipeline, final))
    kept = [json.loads(path.read_text())["kept"] for path in (pipeline / "select" / "selection.json", selected / "selection.json")]
    assert kept[0] == kept[1] and 0.64 <= len(kept[0]) / 40 <= 0.7
    pd.testing.assert_frame_equal(pd.read_parquet(pipeline / "score" / "scores.parquet"), pd.read_parquet(scored / "scores.parquet"))
    for key in METRICS:
        assert one[key] == by_hand[key], key
    assert one["val/rewards/margins"] != 0
    # what the training run records of the selection it trained on
    assert by_hand["selection"]["rule"] == "lossdiff_irm" and by_hand["selection"]["kept_count"] == len(kept[0])
    assert set(by_hand["selection"]["thresholds"]) == {"lossdiff", "irm", "keep_fraction"}
    assert by_hand["run"]["train_pairs"] == len(kept[0]) and by_hand["run"]["init_from"] == str(warm)
    # pipeline.json lists the commands that repeat each stage
    commands = json.loads((pipeline / "pipeline.json").read_text())["commands"]
    assert [shlex.split(command)[1] for command in commands] == ["train.py", "score.py", "select.py", "train.py"]
    assert "data.selection=" in commands[-1] and "model.init_from=" in commands[-1]


@pytest.fixture(scope="module")
def scored(tmp_path_factory):
    folder = tmp_path_factory.mktemp("scored")
    result = run_cli("score", *SMALL[:3], "scores=[random,annotator]", f"hydra.run.dir={folder}")
    assert result.returncode == 0, result.stderr[-3000:]
    return folder


def test_training_on_a_selection_and_its_checks(scored, tmp_path):
    selected = tmp_path / "selected"
    result = run_cli("select", f"scores={scored}", "select=topk", "select.score=random", "select.keep_fraction=0.5",
                     f"hydra.run.dir={selected}")
    assert result.returncode == 0, result.stderr[-3000:]
    selection = json.loads((selected / "selection.json").read_text())
    run = tmp_path / "run"
    check(run_cli("train", *SMALL, f"data.selection={selected}", f"hydra.run.dir={run}"))
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["run"]["train_pairs"] == 20 == metrics["selection"]["kept_count"]
    assert metrics["selection"]["rule"] == "topk" and metrics["selection"]["thresholds"]["score"] == "random"
    assert metrics["run"]["global_steps"] == 3  # 20 pairs in batches of 8
    # other data than the scores were computed on: a clear error before any training
    other = run_cli("train", *SMALL[:1], "data.max_train_pairs=30", f"data.selection={selected}",
                    f"hydra.run.dir={tmp_path / 'other'}")
    assert other.returncode != 0
    assert f"data.selection: {selected / 'selection.json'} was made on other data" in other.stderr
    missing = run_cli("train", *SMALL[:1], f"data.selection={tmp_path / 'nothing.json'}",
                      f"hydra.run.dir={tmp_path / 'm'}")
    assert missing.returncode != 0 and "nothing.json does not exist" in missing.stderr
    both = run_cli("train", *SMALL, "select=random", f"data.selection={selected}", f"hydra.run.dir={tmp_path / 'both'}")
    assert both.returncode != 0 and "both choose the training pairs" in both.stderr


def test_per_pair_weights_from_a_scores_column(scored, tmp_path):
    scores = pd.read_parquet(scored / "scores.parquet")
    weighted, zero = tmp_path / "weighted", tmp_path / "zero"
    check(run_cli("train", *SMALL, f"data.weights={scored / 'scores.parquet'}:random", f"hydra.run.dir={weighted}"))
    plain = tmp_path / "plain"
    check(run_cli("train", *SMALL, f"hydra.run.dir={plain}"))
    first, second = (json.loads((run / "metrics.json").read_text()) for run in (plain, weighted))
    assert second["run"]["weights"].endswith(":random")
    assert second["val/loss"] != first["val/loss"]  # the weights changed the updates
    # weights that are negative, or a column that is missing, are named
    bad = tmp_path / "bad.parquet"
    frame = scores.assign(random=-scores["random"])
    frame.to_parquet(bad)
    result = run_cli("train", *SMALL, f"data.weights={bad}:random", f"hydra.run.dir={zero}")
    assert result.returncode != 0 and f"column 'random' of {bad} is negative or not finite for 40 pairs" in result.stderr
    result = run_cli("train", *SMALL, f"data.weights={scored}:nothing", f"hydra.run.dir={zero}")
    assert result.returncode != 0 and "has no column 'nothing'" in result.stderr


def test_weights_scale_each_pair_loss():
    import torch

    from prefalign.losses import DPOLoss
    from prefalign.module import PreferenceModule
    from tests.conftest import tiny_model

    module = PreferenceModule(tiny_model("llama"), DPOLoss(), optimizer=None)
    module.log = lambda *args, **kwargs: None
    pair = [[5, 6, 7]]
    batch = {
        "pair_ids": ["a", "b"],
        "index": torch.tensor([0, 1]),
        "prompt_input_ids": torch.tensor(pair * 2),
        "prompt_attention_mask": torch.ones(2, len(pair[0]), dtype=torch.long),
        "chosen_input_ids": torch.tensor([[11, 12], [13, 14]]),
        "chosen_attention_mask": torch.ones(2, 2, dtype=torch.long),
        "rejected_input_ids": torch.tensor([[15, 16], [17, 18]]),
        "rejected_attention_mask": torch.ones(2, 2, dtype=torch.long),
        "reference": {"chosen_logps": torch.tensor([-20.0, -22.0]), "rejected_logps": torch.tensor([-21.0, -19.0])},
    }
    losses = module(batch)[0].losses.detach()
    weighted = module.training_step({**batch, "weights": torch.tensor([2.0, 0.0])}, 0)
    # the mean over the batch of w_i * l_i: (2 l_a + 0 l_b) / 2
    torch.testing.assert_close(weighted.detach(), losses[0])
    torch.testing.assert_close(module.training_step(batch, 0).detach(), losses.mean())


def test_trainer_keys_people_type_work(tmp_path):
    run = tmp_path / "run"
    check(run_cli("train", *SMALL, "trainer.max_steps=2", f"hydra.run.dir={run}"))
    assert json.loads((run / "metrics.json").read_text())["run"]["global_steps"] == 2
    run = tmp_path / "limited"
    check(run_cli("train", *SMALL, "trainer.limit_train_batches=1", f"hydra.run.dir={run}"))
    assert json.loads((run / "metrics.json").read_text())["run"]["global_steps"] == 1


def test_a_sweep_experiment_without_multirun_is_refused(tmp_path):
    result = run_cli("train", *SMALL, "experiment=main_comparison", f"hydra.run.dir={tmp_path / 'r'}")
    assert result.returncode != 0
    assert "experiment=main_comparison is a sweep" in result.stderr and "-m" in result.stderr
    assert not (tmp_path / "r" / "metrics.json").exists()


def test_an_unknown_score_fails_before_any_training(tmp_path):
    run = tmp_path / "r"
    result = run_cli("train", *SMALL, "select=topk", "select.score=no_such_score", f"hydra.run.dir={run}")
    assert result.returncode != 0 and "no scorer 'no_such_score'" in result.stderr
    assert "warm-up" not in result.stderr and not (tmp_path / "r" / "score").exists()
    result = run_cli("train", *SMALL, "select=lossdiff_irm", "pipeline.extra_scores=[nope]", f"hydra.run.dir={run}")
    assert result.returncode != 0 and "no scorer 'nope'" in result.stderr


def test_the_analysis_reads_the_data_the_scores_were_computed_on(tmp_path):
    # local pairs with their own ground truth: the analysis must load them, not the built-in set
    data = tmp_path / "pairs.jsonl"
    rows = [{"pair_id": f"local{i}", "prompt": f"What is {i} + 1?", "chosen": str(i + 1), "rejected": str(i + 2),
             "score_chosen": 8.0 - (i % 3), "score_rejected": 4.0, "metadata": {"label_flipped": i % 4 == 0, "ambiguous": False}}
            for i in range(16)]
    data.write_text("".join(json.dumps(row) + "\n" for row in rows))
    scored = tmp_path / "scored"
    result = run_cli("score", "model=tiny_llama", "data=local", f"data.source.train_path={data}", f"data.source.val_path={data}",
                     "scores=[annotator,random]", f"hydra.run.dir={scored}")
    assert result.returncode == 0, result.stderr[-3000:]
    analysis = tmp_path / "analysis"
    result = run_cli("select", f"scores={scored}", "analyze=true", "analysis.rules=[topk,random]", "analysis.against=topk",
                     "analysis.scatter=[[annotator,random]]", f"hydra.run.dir={analysis}")
    assert result.returncode == 0, result.stderr[-3000:]
    noise = pd.read_csv(analysis / "noise.csv").set_index("selection")
    assert noise.loc["random", "label_flipped_base_rate"] == pytest.approx(4 / 16)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["select=random", "select.keep_fraction=1.5"], "select.keep_fraction must be in (0, 1], got 1.5"),
        (["select=topk", "select.keep_fraction=0"], "select.keep_fraction must be in (0, 1], got 0"),
        (["select=lossdiff_irm", "select.lossdiff_band=[90,10]"], "select.lossdiff_band must satisfy 0 <= low < high <= 100"),
        (["select=irm", "select.low=-5"], "must satisfy 0 <= low < high <= 100, got [-5, 90]"),
        (["select=irm", "pipeline.restart_from=nowhere"], "pipeline.restart_from must be one of"),
        (["select=irm", "pipeline.shard_size=0"], "pipeline.shard_size must be a positive number of pairs"),
        (["select=irm", "pipeline.warmup_epochs=-1"], "pipeline.warmup_epochs must be 0 or more"),
        (["select=topk", "select.score=nope"], "no scorer 'nope'"),
        (["select=irm", "pipeline.extra_scores=[nope]"], "no scorer 'nope'"),
    ],
)
def test_bad_settings_fail_before_any_model_is_loaded(overrides, message, tmp_path):
    cache, run = tmp_path / "cache", tmp_path / "run"
    start = time.perf_counter()
    result = run_cli("train", *SMALL, *overrides, f"paths.cache_dir={cache}", f"hydra.run.dir={run}")
    elapsed = time.perf_counter() - start
    assert result.returncode != 0 and message in result.stderr, result.stderr[-2000:]
    # config composition and the checks only (about a second in this process; a warm-up alone takes longer)
    assert elapsed < 60, elapsed
    # nothing was computed: no warm-up, no reference log-probs, no scores
    assert not (cache / "warmup").exists() and not (cache / "reference_logps").exists() and not (run / "score").exists()
