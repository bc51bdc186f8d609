"""Every option of every config group composes, and every ``_target_`` in it instantiates.

The walk is recursive over ``conf/`` (torchtune's config test only looked at the top folder and missed a module
that could not even be imported), so a new YAML file is covered the moment it is added.
"""

from __future__ import annotations

from pathlib import Path

import lightning as L
import pytest
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from prefalign.data.datamodule import PreferenceDataModule, datamodule_from_config
from prefalign.evaluation.benchmarks import Benchmark
from prefalign.evaluation.judges import Judge
from prefalign.losses import PreferenceLoss
from prefalign.models import ModelSource
from prefalign.scoring.base import Scorer
from prefalign.scoring.config import build_scorers
from prefalign.selection import SelectionRule
from prefalign.online.pairs import PairRule
from prefalign.online.rewards import RewardSource
from prefalign.selection.config import select_rule

CONF = Path(__file__).resolve().parents[1] / "conf"
PRIMARY = sorted(path.stem for path in CONF.glob("*.yaml"))
# groups that the evaluation config mounts at their own package (train.py mounts them under evaluation.)
PRIMARY_OF = {"bench": "evaluate", "judge": "evaluate", "generation": "evaluate", "prompts": "sample", "reward": "sample",
              "pairs": "sample"}


def group_options() -> list[tuple[str, str, str]]:
    """(primary config, group, option) for every YAML file below conf/, at any depth."""
    options = []
    for path in sorted(CONF.rglob("*.yaml")):
        relative = path.relative_to(CONF)
        if len(relative.parts) == 1:
            continue
        group = "/".join(relative.parts[:-1])
        options.append((PRIMARY_OF.get(group, "train"), group, path.stem))
    return options


def compose_with(primary: str, overrides: list[str], output_dir: Path) -> DictConfig:
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(config_name=primary, overrides=[*overrides, f"paths.output_dir={output_dir}"])


def test_there_is_something_to_check():
    groups = {group for _, group, _ in group_options()}
    assert {"model", "data", "loss", "select", "score", "trainer", "logger", "paths", "hydra", "debug"} <= groups
    assert "train" in PRIMARY


def instantiate_node(node: DictConfig, group: str, tokenizer, tmp_path: Path, reward_model: Path) -> None:
    """Instantiate what the group holds and check it is what the code expects."""
    if group == "bench":
        assert isinstance(instantiate(node), Benchmark)
    elif group == "judge":
        if "model" in node:
            node.model = str(reward_model)  # the hub reward model cannot be downloaded here
            node.dtype = "float32"
        assert isinstance(instantiate(node), Judge)
    elif group == "generation":
        assert node.temperature >= 0 and node.batch_size > 0
    elif group == "model":
        source = instantiate(node)
        assert isinstance(source, ModelSource)
        assert source.fingerprint()  # cheap: no weights are loaded
    elif group == "data":
        datamodule = datamodule_from_config(node, tokenizer=tokenizer)
        assert isinstance(datamodule, PreferenceDataModule)
    elif group == "loss":
        assert isinstance(instantiate(node), PreferenceLoss)
    elif group == "trainer":
        import torch

        if node.get("accelerator") == "gpu" and not torch.cuda.is_available():
            node.accelerator = "cpu"  # every other setting is still checked by instantiating it here
        assert isinstance(instantiate(node, logger=False, enable_checkpointing=False), L.Trainer)
    elif group == "logger":
        instantiate(node, save_dir=str(tmp_path))
    elif group == "prompts":
        for key in ("path", "dataset"):
            if key in node.keys() and OmegaConf.is_missing(node, key):
                node[key] = str(tmp_path / "prompts.jsonl")  # instantiating reads nothing; load() would
        assert isinstance(instantiate(node), Benchmark)
    elif group == "reward":
        if "judge" in node and "model" in node.judge:
            node.judge.model = str(reward_model)
            node.judge.dtype = "float32"
        assert isinstance(instantiate(node), RewardSource)
    elif group == "pairs":
        assert isinstance(instantiate(node), PairRule)


@pytest.mark.parametrize(("primary", "group", "option"), group_options(), ids=lambda v: str(v))
def test_every_option_composes_and_instantiates(primary, group, option, tokenizer, tmp_path, tiny_reward_model):
    # the hydra group is applied by the launcher (checked by the CLI tests); a score option is looked up by name
    # (prefalign.scoring.config); the rest compose as overrides
    overrides = [] if group in {"hydra", "score"} else [f"{group}={option}"]
    cfg = compose_with(primary, overrides, tmp_path)
    OmegaConf.resolve(cfg)
    if group == "score":
        (scorer,) = build_scorers(cfg, [option])
        assert isinstance(scorer, Scorer) and scorer.name == option and scorer.settings["_target_"]
    elif group == "select":
        rule = select_rule(cfg.select)
        assert isinstance(rule, SelectionRule)
        # the rule's config brings the scorers it reads (conf/select/<rule>.yaml defaults)
        assert set(rule.scores) <= set(cfg.get("scorers") or {}), "the rule reads a score its config does not declare"
        assert [scorer.name for scorer in build_scorers(cfg, rule.scores)] == rule.scores
    elif group in cfg and group not in {"hydra", "experiment", "debug"}:
        node = cfg[group]
        if group == "data" and OmegaConf.is_missing(node.source, "train_path"):
            node.source.train_path = str(tmp_path / "train.jsonl")
        instantiate_node(node, group, tokenizer, tmp_path, tiny_reward_model)
    else:
        # whole-run options: the trainer, loss and data they produce must still instantiate
        instantiate_node(cfg.trainer, "trainer", tokenizer, tmp_path, tiny_reward_model)
        instantiate_node(cfg.loss, "loss", tokenizer, tmp_path, tiny_reward_model)


def test_top_level_options_instantiate(tmp_path):
    cfg = compose_with("train", [], tmp_path)
    OmegaConf.resolve(cfg)
    optimizer = instantiate(cfg.optimizer)
    import torch

    parameter = torch.nn.Parameter(torch.zeros(2))
    built = optimizer([parameter])
    scheduler = instantiate(cfg.scheduler)(built, total_steps=10)
    assert scheduler.get_last_lr()[0] > 0
    for callback in cfg.callbacks.values():
        instantiate(callback)


def leaves(node, prefix: str = "") -> list[tuple[str, object]]:
    """(dotted key, value) of every leaf of a plain nested dict."""
    if not isinstance(node, dict):
        return [(prefix, node)]
    return [leaf for key, value in node.items() for leaf in leaves(value, f"{prefix}.{key}" if prefix else str(key))]


@pytest.mark.parametrize("group", ["experiment", "debug"])
def test_a_preset_overrides_the_primary_configs_own_keys(group, tmp_path):
    """An experiment or debug preset is chosen to change the run: each value it sets reaches the composed config,
    also where ``train.yaml`` sets the same key itself (``pipeline.restart_from``, ``pipeline.seed``: the test
    bed's restart from the initial weights was once lost to the primary config's ``_self_``)."""
    checked = 0
    for path in sorted((CONF / group).glob("*.yaml")):
        own = OmegaConf.to_container(OmegaConf.load(path))
        own.pop("defaults", None)
        own.pop("hydra", None)
        cfg = compose_with("train", [f"{group}={path.stem}"], tmp_path)
        for key, value in leaves(own):
            assert OmegaConf.select(cfg, key) == value, f"{path.name}: {key} = {value!r} did not reach the run's config"
            checked += 1
    assert checked > 0
