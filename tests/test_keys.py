"""Cache keys come from the resolved config of everything that changes a result, and of nothing else.

Each key is computed from composed configs, as the stages compute them, without loading any model: the warm-up
(a training run: :func:`prefalign.keys.training_key`), the scores (:func:`prefalign.stages.score.scores_key`),
the auxiliary models (LossDiff's and the BeeS proxy's keys), the reference log-probs and the evaluation folders.
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from prefalign.evaluation.policy import result_folder
from prefalign.keys import training_key
from prefalign.logprobs import LogpSettings
from prefalign.losses import DPOLoss
from prefalign.run_setup import reference_pass_settings
from prefalign.scoring.base import ScoringContext
from prefalign.scoring.config import build_scorers
from prefalign.stages.score import scores_key
from tests.test_configs import compose_with

BASE = ["model=tiny_llama", "select=lossdiff_irm"]


def warmup_key(tmp_path, *overrides: str) -> str:
    return training_key(compose_with("train", [*BASE, *overrides], tmp_path / "run"), "policy", "data")


def score_key(tmp_path, *overrides: str, names=("lossdiff", "irm", "influence", "bees_implicit")) -> str:
    cfg = compose_with("score", [*BASE, *overrides], tmp_path / "run")
    return scores_key(cfg, build_scorers(cfg, list(names)), "policy", ("train", "val"), "cpu")


def auxiliary_keys(tmp_path, *overrides: str) -> tuple[str, str]:
    """LossDiff's validation-aligned model and the BeeS proxy, as their scorers name them in the cache."""
    cfg = compose_with("score", [*BASE, *overrides], tmp_path / "run")
    lossdiff, bees = build_scorers(cfg, ["lossdiff", "bees_implicit"])
    split = SimpleNamespace(fingerprint=lambda: "tokens")
    context = ScoringContext(
        policy=torch.nn.Linear(2, 2), policy_fingerprint="policy", loss=DPOLoss(),
        datamodule=SimpleNamespace(datasets={"train": split, "val": split}), source=SimpleNamespace(fingerprint=lambda: "initial"),
        cache_dir=tmp_path, work_dir=tmp_path, cfg=cfg,
    )
    bees_key = context.key("bees-proxy-v2", context.source.fingerprint(), context.data_fingerprint("train"), bees.settings)
    return lossdiff.auxiliary_key(context), bees_key


RESULT_CHANGES = [
    "loss.beta=0.2",
    "loss=slic",
    "+loss.tag=a_string",  # string- and list-valued loss settings count like numbers
    "+loss.weights=[1,2]",
    "optimizer.lr=2e-5",
    "scheduler.decay=linear",  # a string
    "trainer.max_steps=20",
    "trainer.limit_train_batches=4",
    "trainer.accumulate_grad_batches=2",
    "trainer.precision=bf16-mixed",
    "data.group_by_length=false",
    "data.max_train_pairs=100",
    "data.use_chat_template=false",
    "data.batch_size=4",
    "data.flip_fraction=0.1",
    "data.val_flip_fraction=0.1",
    "data.source.val=test_pairs",
    "model.seed=1",
    "model.lora={r: 4}",
    "seed=1",
    "pack_length=null",
    "head_chunk_tokens=null",
    "debug=fast",
]
NO_EFFECT = ["logger=csv", "paths.output_dir=/elsewhere", "paths.cache_dir=/other/cache", "trainer.log_every_n_steps=1",
             "evaluate_after_training=true", "select.keep_fraction=0.5", "pipeline.shard_size=64",
             "data.flip_seed=3"]  # the flip seed while nothing is flipped


@pytest.mark.parametrize("change", RESULT_CHANGES)
def test_a_result_option_changes_the_warmup_key(change, tmp_path):
    assert warmup_key(tmp_path, change) != warmup_key(tmp_path)


@pytest.mark.parametrize("change", NO_EFFECT)
def test_logger_output_dir_and_selection_settings_leave_the_warmup_key(change, tmp_path):
    assert warmup_key(tmp_path, change) == warmup_key(tmp_path)


def test_options_added_later_keep_the_keys_of_earlier_caches_at_their_defaults(tmp_path):
    from omegaconf import open_dict

    cfg = compose_with("train", BASE, tmp_path)
    before = cfg.copy()
    with open_dict(before):  # the config as it was before these options existed
        for key in ("flip_fraction", "val_flip_fraction", "flip_seed"):
            before.data.pop(key)
        before.data.source.pop("val")
    assert training_key(cfg, "policy", "data") == training_key(before, "policy", "data")
    # the seed counts once something is flipped
    flipped = compose_with("train", [*BASE, "data.flip_fraction=0.1"], tmp_path)
    reseeded = compose_with("train", [*BASE, "data.flip_fraction=0.1", "data.flip_seed=3"], tmp_path)
    assert training_key(flipped, "policy", "data") != training_key(reseeded, "policy", "data")


def test_the_inputs_that_configs_point_to_change_the_key(tmp_path):
    cfg = compose_with("train", BASE, tmp_path)
    assert training_key(cfg, "policy", "data") != training_key(cfg, "policy-rewritten", "data")
    assert training_key(cfg, "policy", "data") != training_key(cfg, "policy", "data-rewritten")


SCORE_CHANGES = [
    "loss.beta=0.2",
    "+loss.tag=a_string",
    "scorers.lossdiff.epochs=2",
    "scorers.lossdiff.init=reference",  # a string
    "+scorers.influence.parameters=[lm_head]",  # a list
    "+scorers.influence.method=autograd",
    "scorers.lossdiff.train.optimizer.lr=5e-6",  # an auxiliary-model option
    "scorers.lossdiff.train.trainer.accumulate_grad_batches=2",
    "+scorers.bees_implicit.seed_pairs=16",
    "optimizer.lr=2e-5",  # the auxiliary models train with the run's optimizer
    "scheduler.warmup_ratio=0.2",
    "trainer.precision=bf16-mixed",
    "data.group_by_length=false",
    "seed=1",
    "pack_length=512",
    "data.val_flip_fraction=0.1",  # the validation pairs the scorers read
]


@pytest.mark.parametrize("change", SCORE_CHANGES)
def test_a_result_option_changes_the_scores_key(change, tmp_path):
    assert score_key(tmp_path, change) != score_key(tmp_path)


@pytest.mark.parametrize("change", ["logger=csv", "paths.output_dir=/elsewhere", "paths.cache_dir=/other", "shard_size=16",
                                    "trainer.max_steps=20", "trainer.limit_train_batches=4"])
def test_options_that_cannot_change_scores_leave_the_scores_key(change, tmp_path):
    # max_steps and limit_train_batches shorten the run's own training; the auxiliary models train their own epochs
    assert score_key(tmp_path, change) == score_key(tmp_path)


def test_a_scores_key_names_its_columns(tmp_path):
    assert score_key(tmp_path, names=("irm",)) != score_key(tmp_path, names=("irm", "lossdiff"))
    # the same scorer under another column name is another file
    assert score_key(tmp_path, "+scorers.margin.option=irm", names=("margin",)) != score_key(tmp_path, names=("irm",))


@pytest.mark.parametrize(
    ("change", "changes"),
    [
        ("scorers.lossdiff.epochs=2", (True, False)),
        ("scorers.lossdiff.train.optimizer.lr=5e-6", (True, False)),
        ("++scorers.bees_implicit.beta=0.5", (False, True)),
        ("++scorers.bees_implicit.train.optimizer.lr=1e-6", (False, True)),
        ("optimizer.lr=2e-5", (True, True)),
        ("trainer.accumulate_grad_batches=4", (True, True)),
        ("loss.beta=0.3", (True, True)),
        ("logger=csv", (False, False)),
        ("paths.output_dir=/elsewhere", (False, False)),
    ],
)
def test_auxiliary_model_keys(change, changes, tmp_path):
    base = auxiliary_keys(tmp_path)
    changed = auxiliary_keys(tmp_path, change)
    assert (changed[0] != base[0], changed[1] != base[1]) == changes


def test_auxiliary_models_honour_the_run_settings_unless_overridden(tmp_path):
    cfg = compose_with("score", [*BASE, "optimizer.lr=3e-5", "trainer.accumulate_grad_batches=2",
                                 "scorers.lossdiff.train.optimizer.lr=5e-6"], tmp_path)
    (lossdiff,) = build_scorers(cfg, ["lossdiff"])
    train = lossdiff.settings["train"]
    assert train["optimizer"]["lr"] == 5e-6 and train["optimizer"]["_target_"] == "torch.optim.AdamW"
    assert train["scheduler"]["decay"] == "cosine" and train["trainer"]["accumulate_grad_batches"] == 2
    assert train["trainer"]["precision"] == "32-true" and train["trainer"]["devices"] == 1


def test_reference_key_settings(tmp_path):
    def settings(*overrides: str) -> dict:
        cfg = compose_with("train", [*BASE, *overrides], tmp_path)
        return reference_pass_settings(cfg, LogpSettings.from_config(cfg))

    base = settings()
    # the log-prob settings are keyed by their config names and values, as the config gives them
    assert {key: base[key] for key in ("share_prompt", "pack_length", "head_chunk_tokens")} == {
        "share_prompt": True, "pack_length": 256, "head_chunk_tokens": 256
    }
    for change in ("pack_length=null", "head_chunk_tokens=null", "share_prompt=false", "data.eval_batch_size=4"):
        assert settings(change) != base, change
    assert settings("loss=slic", "logger=csv") == base


def test_evaluation_folders_are_keyed_by_their_settings(tmp_path):
    def folder(*overrides: str) -> str:
        cfg = compose_with("evaluate", list(overrides), tmp_path)
        return result_folder(cfg.bench, cfg.judge, cfg.generation)

    default = folder()
    assert default.startswith("builtin-verifier-T0.7-s0-")
    assert folder("generation=greedy").startswith("builtin-verifier-greedy-")
    assert len({default, folder("generation=greedy"), folder("bench.limit=12"), folder("generation.seed=1")}) == 4
    assert folder("paths.output_dir=/elsewhere") == default
    openai = folder("judge=openai")
    assert folder("judge=openai", "judge.client.concurrency=1") == openai  # how requests are sent: no effect
    assert folder("judge=openai", "judge.client.model=other") != openai
