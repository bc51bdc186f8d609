"""RS-DPO and Curri-DPO pairs trained end to end on the tiny model: pairs from sample.py as an ordinary data set,
and Curri-DPO's stages, each from the previous stage's policy and (by default) against it as the reference. The
commands run in-process (:func:`tests.entry.run_cli`), as the command line runs them."""

from __future__ import annotations

import json

from omegaconf import OmegaConf

from tests.entry import run_cli
from tests.test_cli import check

SAMPLE = ["model=tiny_llama", "num_prompts=12", "samples_per_prompt=3", "generation.max_new_tokens=8", "reward=annotator"]


def test_rs_dpo_pairs_from_sample_py_train_as_an_ordinary_data_set(tmp_path):
    cache = f"paths.cache_dir={tmp_path / 'cache'}"
    result = run_cli("sample", *SAMPLE, cache, "pairs=rs_dpo", "pairs.tau=1.0", "pairs.eta=0.8", f"hydra.run.dir={tmp_path / 'sampled'}")
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((tmp_path / "sampled" / "sample_report.json").read_text())["pairs"]
    pairs = [json.loads(line) for line in (tmp_path / "sampled" / "pairs.jsonl").read_text().splitlines()]
    # sigmoid(gap) > 0.8 <=> gap > ln 4 = 1.386 on the annotator's whole-number ratings: gaps of 2 or more
    assert pairs and all(p["score_chosen"] - p["score_rejected"] >= 2 for p in pairs)
    assert report["pairs"] == len(pairs) and report["dropped"]["below_threshold"] > 0
    check(run_cli("train", "model=tiny_llama", cache, "data=local", f"data.source.train_path={tmp_path / 'sampled' / 'pairs.jsonl'}",
                  "data.source.val_fraction=0.2", "logger=csv", "optimizer.lr=1e-3", f"hydra.run.dir={tmp_path / 'trained'}"))
    metrics = json.loads((tmp_path / "trained" / "metrics.json").read_text())
    assert metrics["run"]["train_pairs"] + metrics["run"]["val_pairs"] == len(pairs)


def test_curri_dpo_trains_its_stages_from_easy_to_hard_and_resumes(tmp_path):
    run, cache = tmp_path / "run", f"paths.cache_dir={tmp_path / 'cache'}"
    args = ["model=tiny_llama", "online=curriculum", "online.prompts_per_round=10", "online.samples_per_prompt=3",
            "online.generation.max_new_tokens=8", "online.evaluate=false", "data.max_val_pairs=8", "logger=csv",
            "optimizer.lr=1e-3", cache, f"hydra.run.dir={run}"]
    check(run_cli("train", *args))
    metrics = json.loads((run / "metrics.json").read_text())
    stages = metrics["stages"]
    assert [s["stage"] for s in stages] == [1, 2] and all(s["pairs"] > 0 for s in stages)
    assert stages[0]["mean_reward_gap"] >= stages[1]["mean_reward_gap"] > 0  # easy (large gap) first
    for stage in (1, 2):
        pairs = [json.loads(line) for line in (run / f"stage-{stage}" / "pairs.jsonl").read_text().splitlines()]
        assert {p["metadata"]["stage"] for p in pairs} == {stage}
    one, two = (OmegaConf.load(run / f"stage-{s}" / "train" / "config.yaml") for s in (1, 2))
    assert one.model.init_from is None and one.model.reference_path is None
    assert two.model.init_from == two.model.reference_path == str(run / "stage-1" / "train")
    # the same command again: every stage is done, nothing is trained again
    before = (run / "stage-2" / "train" / "metrics.json").read_text()
    check(run_cli("train", *args))
    assert (run / "stage-2" / "train" / "metrics.json").read_text() == before
    # online.reference=initial keeps the SFT model as every stage's reference; max_stages keeps the easiest stages
    check(run_cli("train", *args[:-1], "online.reference=initial", "online.pairs.max_stages=1",
                  f"hydra.run.dir={tmp_path / 'initial'}"))
    assert [s["stage"] for s in json.loads((tmp_path / "initial" / "metrics.json").read_text())["stages"]] == [1]
    assert OmegaConf.load(tmp_path / "initial" / "stage-1" / "train" / "config.yaml").model.reference_path is None
