"""Iterative DPO end to end on the tiny model: rounds that sample from the previous round's policy, the per-round
table, resumption at the first unfinished round, the reference options and BeeS's proxy trained once. The commands
run in-process (:func:`tests.entry.run_cli`), as the command line runs them."""

from __future__ import annotations

import json

import pytest
from omegaconf import OmegaConf

from prefalign.models import directory_fingerprint
from tests.entry import run_cli
from tests.test_cli import check

# 10 prompts a round, 8 validation pairs, answers of 8 tokens
ONLINE = ["model=tiny_llama", "online=iterative", "online.prompts_per_round=10", "online.samples_per_prompt=3",
          "online.generation.max_new_tokens=8", "online.reward=annotator", "data.max_val_pairs=8", "logger=csv",
          "optimizer.lr=1e-3"]


def test_rounds_sample_from_the_previous_policy_and_resume_at_the_first_unfinished_round(tmp_path):
    run, cache = tmp_path / "run", f"paths.cache_dir={tmp_path / 'cache'}"
    common = [*ONLINE, cache, "evaluation.bench.limit=6", "evaluation.bench.max_new_tokens=8", "online.reference=previous",
              f"hydra.run.dir={run}"]
    check(run_cli("train", *common, "online.rounds=1"))
    first = (run / "round-1" / "train" / "metrics.json").read_text()
    # the same command with more rounds: round 1 is done (not trained again), round 2 starts from its policy
    check(run_cli("train", *common, "online.rounds=2"))
    assert (run / "round-1" / "train" / "metrics.json").read_text() == first

    metrics = json.loads((run / "metrics.json").read_text())
    rounds = metrics["rounds"]
    assert [r["round"] for r in rounds] == [1, 2]
    for r in rounds:
        assert r["prompts"] == 10 and r["responses"] == 30 and 0 < r["pairs_built"] <= 10
        assert r["pairs_kept"] == r["pairs_built"]  # select=full
        assert set(r["wall_s"]) == {"sampling", "training", "evaluation", "round"}
        assert r["heldout"]["n"] == 6 and 0 <= r["heldout"]["success"] <= 1 and "val/loss" in r["metrics"]
    assert metrics["initial"]["n"] == 6 and metrics["run"]["policy_dir"] == str(run / "round-2" / "train" / "policy")
    # round 2 samples new prompts with round 1's policy, and (online.reference=previous) takes it as reference
    responses = [json.loads(line) for line in (run / "round-2" / "sample" / "responses.jsonl").read_text().splitlines()]
    round_one = [json.loads(line) for line in (run / "round-1" / "sample" / "responses.jsonl").read_text().splitlines()]
    assert {r["prompt_id"] for r in responses}.isdisjoint({r["prompt_id"] for r in round_one})
    trained = directory_fingerprint(run / "round-1" / "train" / "policy")
    assert {r["provenance"]["policy"] for r in responses} == {f"path:{trained}"}
    assert round_one[0]["provenance"]["policy"].startswith("initial:")
    config = OmegaConf.load(run / "round-2" / "train" / "config.yaml")
    assert config.model.init_from == config.model.reference_path == str(run / "round-1" / "train")
    pair_ids = [json.loads(line)["pair_id"] for line in (run / "round-2" / "sample" / "pairs.jsonl").read_text().splitlines()]
    assert all(pair_id.startswith("r2-") for pair_id in pair_ids)


def test_bees_in_online_rounds_trains_its_proxy_in_the_first_round_only(tmp_path):
    run, cache = tmp_path / "run", tmp_path / "cache"
    check(run_cli("train", *ONLINE, f"paths.cache_dir={cache}", "online.rounds=2", "online.evaluate=false", "select=bees",
                  "select.keep_fraction=0.5", f"hydra.run.dir={run}"))
    rounds = json.loads((run / "metrics.json").read_text())["rounds"]
    assert [r["pairs_kept"] for r in rounds] == [r["pairs_built"] // 2 for r in rounds]
    proxies = []
    for index in (1, 2):
        entry = json.loads((run / f"round-{index}" / "train" / "score" / "scores_summary.json").read_text())["cache_entry"]
        proxies.append(json.loads((tmp_path / entry / "bees_implicit_proxy.json").read_text())["proxy"])
    assert proxies[0] == proxies[1] and len(list((cache / "auxiliary").iterdir())) == 1
    config = OmegaConf.load(run / "round-2" / "train" / "config.yaml")
    assert config.scorers.bees_implicit.proxy == proxies[0] and config.model.reference_path is None


def test_online_runs_refuse_a_training_stage_of_several_processes():
    from prefalign.stages.iterative import check_one_device

    check_one_device(OmegaConf.create({"trainer": {"devices": 1}, "online": {"runner": "prefalign.stages.iterative.run_iterative"}}))
    for trainer in ({"devices": 2}, {"devices": 1, "num_nodes": 2},
                    {"devices": "auto", "strategy": {"_target_": "lightning.pytorch.strategies.DDPStrategy"}}):
        with pytest.raises(ValueError, match="on one device"):
            check_one_device(OmegaConf.create({"trainer": trainer, "online": {"runner": "prefalign.stages.iterative.run_iterative"}}))
