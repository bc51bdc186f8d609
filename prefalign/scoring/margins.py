"""Margins that do not depend on the policy being trained: annotator and reward-model margins, IFD, the BeeS
implicit margin of a proxy model, and random scores (the baselines of both papers).
"""

from __future__ import annotations

import logging
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Subset

from prefalign import distributed
from prefalign.atomic import atomic_entry, verified, write_json
from prefalign.data.records import DataError, PreferencePair
from prefalign.logprobs import pair_logps
from prefalign.losses import DPOLoss
from prefalign.models import directory_fingerprint, load_checkpoint, resolve_checkpoint_dir
from prefalign.rewards import RewardModel
from prefalign.scoring.base import Scorer, ScoringContext

log = logging.getLogger(__name__)


def batch_pairs(context: ScoringContext, batch: dict[str, Any]) -> list[PreferencePair]:
    """The raw pairs of a batch (by dataset index)."""
    pairs = context.datamodule.pairs["train"]
    return [pairs[int(index)] for index in batch["index"]]


class RandomScorer(Scorer):
    """``random``: a uniform number in [0, 1) per pair, from the seed and the pair id (order-independent)."""

    name = "random"
    label = "Random"

    def __init__(self, seed: int = 0) -> None:
        self.seed = seed

    def score_batch(self, context: ScoringContext, batch: dict[str, Any], shared: dict[str, Tensor]) -> Tensor:
        values = [
            np.random.default_rng([self.seed, zlib.crc32(pair_id.encode())]).random() for pair_id in batch["pair_ids"]
        ]
        return torch.tensor(values, dtype=torch.float64)


class ReferenceMarginScorer(Scorer):
    """``reference_margin``: ``s_ref(y_w) - s_ref(y_l)``, the reference (SFT) model's own log-prob margin.

    The cached reference log-probs make it free: a pair the SFT model already prefers the right way round has a
    positive margin. With ``length_normalize`` each side is divided by its token count, as the length-normalised
    margins of SimPO and M_AP are.

    Args:
        length_normalize: per-token averages instead of sums.
    """

    name = "reference_margin"
    label = "Reference margin"

    def __init__(self, length_normalize: bool = False) -> None:
        self.length_normalize = length_normalize

    def score_batch(self, context: ScoringContext, batch: dict[str, Any], shared: dict[str, Tensor]) -> Tensor:
        reference = batch.get("reference")
        if reference is None:
            raise ValueError("reference_margin needs the cached reference log-probs of the training pairs")
        chosen, rejected = reference["chosen_logps"].double(), reference["rejected_logps"].double()
        if self.length_normalize:
            chosen = chosen / batch["chosen_attention_mask"].sum(-1)
            rejected = rejected / batch["rejected_attention_mask"].sum(-1)
        return chosen - rejected


class AnnotatorScorer(Scorer):
    """``annotator``: the margin of the annotator scores that ship with the data, ``score_chosen - score_rejected``.

    UltraFeedback's GPT-4 ratings (the papers' "GPT4" baseline) or the built-in set's simulated annotator.
    """

    name = "annotator"
    label = "Annotator"

    def score_batch(self, context: ScoringContext, batch: dict[str, Any], shared: dict[str, Tensor]) -> Tensor:
        margins = []
        for pair in batch_pairs(context, batch):
            if "score_chosen" not in pair.scores or "score_rejected" not in pair.scores:
                raise DataError(f"pair {pair.pair_id}: the annotator score needs score_chosen and score_rejected")
            margins.append(pair.scores["score_chosen"] - pair.scores["score_rejected"])
        return torch.tensor(margins, dtype=torch.float64)


class RewardModelScorer(Scorer):
    """``reward_model``: the external reward-model margin ``r(x, y_w) - r(x, y_l)``.

    Args:
        model: a sequence-classification reward model, hub name or local path.
        dtype, max_length, batch_size: see :class:`RewardModel`.
    """

    name = "reward_model"
    label = "Reward model"

    def __init__(self, model: str, dtype: str = "float32", max_length: int = 1024, batch_size: int = 8) -> None:
        self.model = model
        self.dtype = dtype
        self.max_length = max_length
        self.batch_size = batch_size
        self._reward_model: RewardModel | None = None

    def prepare(self, context: ScoringContext) -> None:
        self._reward_model = RewardModel(self.model, self.dtype, self.max_length, self.batch_size).to(context.device)

    def score_batch(self, context: ScoringContext, batch: dict[str, Any], shared: dict[str, Tensor]) -> Tensor:
        assert self._reward_model is not None
        pairs = batch_pairs(context, batch)
        prompts = [pair.prompt for pair in pairs]
        chosen = self._reward_model.rewards(prompts, [pair.chosen for pair in pairs])
        rejected = self._reward_model.rewards(prompts, [pair.rejected for pair in pairs])
        return chosen - rejected

    def release(self) -> None:
        self._reward_model = None


class IFDScorer(Scorer):
    """``ifd``: the instruction-following-difficulty (conditional perplexity) margin, BeeS paper Sec. 4 baselines.

    ``IFD(y|x) = PPL(y|x) / PPL(y)`` with ``PPL(y|x) = exp(-s(y|x)/|y|)`` and ``PPL(y)`` the perplexity of the
    completion alone (after a single start token: BOS, or EOS for tokenizers without one). The margin is
    ``sign * (IFD(y_w|x) - IFD(y_l|x))``. Computed with the reference (initial / SFT) model, as the BeeS paper
    does with its SFT model; ``s(y|x)`` is then the cached reference log-prob.

    Args:
        sign: +1 or -1.
    """

    name = "ifd"
    label = "IFD"

    def __init__(self, sign: int = 1) -> None:
        if sign not in (1, -1):
            raise ValueError(f"score.ifd.sign must be 1 or -1, got {sign}")
        self.sign = sign
        self._model: torch.nn.Module | None = None

    def prepare(self, context: ScoringContext) -> None:
        self._model = context.source.load_reference_model().to(context.device).eval()

    def score_batch(self, context: ScoringContext, batch: dict[str, Any], shared: dict[str, Tensor]) -> Tensor:
        assert self._model is not None
        tokenizer = context.datamodule.tokenizer
        start = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
        size = batch["prompt_input_ids"].shape[0]
        device = batch["prompt_input_ids"].device
        bare = {
            **batch,
            "prompt_input_ids": torch.full((size, 1), start, dtype=torch.long, device=device),
            "prompt_attention_mask": torch.ones((size, 1), dtype=torch.long, device=device),
        }
        # padded passes with the prompt shared (LogpSettings' default), whatever the run's settings
        with torch.no_grad():
            unconditional = pair_logps(self._model, bare)
            # s(y|x) under the reference: the cached log-probs, when the batch has them
            conditional = batch.get("reference") or pair_logps(self._model, batch)
            chosen_given, rejected_given = conditional["chosen_logps"], conditional["rejected_logps"]
        lengths_w, lengths_l = unconditional["chosen_lengths"], unconditional["rejected_lengths"]
        ifd_w = torch.exp((unconditional["chosen_logps"] - chosen_given) / lengths_w)
        ifd_l = torch.exp((unconditional["rejected_logps"] - rejected_given) / lengths_l)
        return self.sign * (ifd_w - ifd_l).double()

    def release(self) -> None:
        self._model = None


class WithReference:
    """A loader whose batches carry another reference's log-probs (their ``reference`` field holds the chosen and
    rejected log-probs of ``reference``, computed batch by batch): the DPO training of a separate BeeS proxy is
    regularised towards that proxy's own initial weights."""

    def __init__(self, loader: Any, reference: torch.nn.Module, context: ScoringContext) -> None:
        self.loader, self.reference, self.context = loader, reference, context
        self.dataset = loader.dataset

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self) -> Any:
        for batch in self.loader:
            with torch.no_grad():
                logps = self.context.pair_logps(self.reference, {k: v.to(self.context.device) if isinstance(v, Tensor) else v
                                                                 for k, v in batch.items()})
            batch["reference"] = {name: logps[name].float().cpu() for name in ("chosen_logps", "rejected_logps")}
            yield batch


class BeesImplicitScorer(Scorer):
    """``bees_implicit``: the BeeS implicit reward margin ``m_im = rho_w - rho_l`` of a weakly aligned proxy.

    BeeS paper (Deng et al.), Sec. 3.2 and 4.1: a small proxy model is DPO-trained on a random seed subset (about
    2,000 pairs) and its implicit margins on every pair are one of the margin sources of the Bayesian
    aggregation. Here the proxy starts from the policy's initial weights (the same model family, as the paper
    allows), trains with DPO through the one trainer builder (the run's optimizer, scheduler and trainer
    settings, each overridable in ``train``), and is cached by content in ``<cache_dir>/auxiliary/<key>``.

    Args:
        seed_pairs: size of the random seed subset (all pairs when there are fewer).
        beta: DPO ``beta`` of the proxy's training.
        epochs: its epochs.
        seed: seed of the subset draw.
        train: overrides of the run's ``optimizer``, ``scheduler`` and ``trainer`` settings for the proxy
            (resolved by :func:`prefalign.scoring.config.build_scorers`).
        proxy: a proxy trained before (a folder in Hugging Face format), used as it is: iterative DPO trains the
            proxy in its first round and scores every later round with it, as the paper does. The folder of
            the proxy used is recorded in the scores' cache entry (``bees_implicit_proxy.json``).
        model: the proxy's own initial weights, a local folder (run directory or checkpoint) or hub name: the paper
            trains a separate, smaller model (Llama-3.2-3B for 8B policies) and takes ``rho`` against that
            model's own initial weights; it must share the policy's tokenizer. ``null``: the policy's initial
            weights, with the run's reference.
    """

    name = "bees_implicit"
    label = "BeeS implicit margin"

    def __init__(
        self,
        seed_pairs: int = 2000,
        beta: float = 0.1,
        epochs: int = 2,
        seed: int = 0,
        train: dict[str, Any] | None = None,
        proxy: str | None = None,
        model: str | None = None,
    ) -> None:
        if epochs < 1:
            raise ValueError(f"score.bees_implicit.epochs must be at least 1, got {epochs}")
        self.seed_pairs = seed_pairs
        self.beta = beta
        self.epochs = epochs
        self.seed = seed
        self.train = train
        self.proxy = proxy
        self.model = model
        self._proxy: torch.nn.Module | None = None
        self._proxy_reference: torch.nn.Module | None = None

    def seed_subset(self, size: int) -> list[int]:
        generator = np.random.default_rng(self.seed)
        return sorted(generator.permutation(size)[: min(self.seed_pairs, size)].tolist())

    def prepare(self, context: ScoringContext) -> None:
        dataset = context.datamodule.datasets["train"]
        if dataset.reference is None:
            raise ValueError("bees_implicit needs the reference log-probs of the training pairs")
        if self.train is None:
            raise ValueError("bees_implicit needs its training settings (build it with prefalign.scoring.config.build_scorers)")
        subset = self.seed_subset(len(dataset))
        initial = self.proxy_model_fingerprint(context) if self.model else context.source.fingerprint()
        key = context.key("bees-proxy-v2", initial, context.data_fingerprint("train"), self.settings)
        folder = Path(self.proxy).expanduser() if self.proxy else Path(context.cache_dir) / "auxiliary" / key
        if self.proxy:
            if not (folder / "config.json").exists():
                raise FileNotFoundError(f"scorers.bees_implicit.proxy={self.proxy}: no model there (no config.json)")
            log.info("bees_implicit: the proxy model given, %s", folder)
            proxy = load_checkpoint(folder, next(context.policy.parameters()).dtype)
        elif verified(folder, context.cache_dir, "auxiliary", required=("config.json",)):  # a corrupt one is moved aside
            log.info("bees_implicit: proxy model from cache %s", folder)
            proxy = load_checkpoint(folder, next(context.policy.parameters()).dtype)
        else:
            proxy = self.load_proxy_model(context) if self.model else context.source.load_base_model()
            for parameter in proxy.parameters():
                parameter.requires_grad_(True)
            loader: Any = DataLoader(
                Subset(dataset, subset),
                batch_size=context.datamodule.batch_size,
                shuffle=True,
                generator=torch.Generator().manual_seed(self.seed),
                collate_fn=context.datamodule.collate,
            )
            if self.model:  # DPO against the proxy's own initial weights
                loader = WithReference(loader, self.load_proxy_model(context).to(context.device).eval(), context)
            proxy = context.fit(proxy.to(context.device), loader, self.train, self.epochs, "BeeS proxy model", DPOLoss(self.beta))
            atomic_entry(folder, proxy.save_pretrained)
        if distributed.is_main():
            write_json({"proxy": str(folder)}, Path(context.work_dir) / "bees_implicit_proxy.json")
        self._proxy = proxy.to(context.device).eval()
        if self.model:  # rho against the proxy's own initial weights, not the policy's reference
            self._proxy_reference = self.load_proxy_model(context).to(context.device).eval()

    def load_proxy_model(self, context: ScoringContext) -> torch.nn.Module:
        """The separate proxy's initial weights (``model``), checked to share the policy's tokenizer."""
        from transformers import AutoModelForCausalLM, AutoTokenizer

        assert self.model is not None
        local = Path(str(self.model)).expanduser()
        folder = resolve_checkpoint_dir(local) if local.exists() else None
        tokenizer = AutoTokenizer.from_pretrained(folder or self.model)
        if tokenizer.get_vocab() != context.source.load_tokenizer().get_vocab():
            raise ValueError(f"scorers.bees_implicit.model={self.model}: its tokenizer is not the policy's; the pairs are "
                             "tokenised once, so the proxy must share the policy's vocabulary")
        dtype = next(context.policy.parameters()).dtype
        if folder is not None:
            return load_checkpoint(folder, dtype)
        return AutoModelForCausalLM.from_pretrained(self.model, dtype=dtype)

    def proxy_model_fingerprint(self, context: ScoringContext) -> str:
        local = Path(str(self.model)).expanduser()
        return f"path:{directory_fingerprint(resolve_checkpoint_dir(local))}" if local.exists() else f"hub:{self.model}"

    def score_batch(self, context: ScoringContext, batch: dict[str, Any], shared: dict[str, Tensor]) -> Tensor:
        assert self._proxy is not None
        with torch.no_grad():
            proxy = context.pair_logps(self._proxy, batch)
            if self._proxy_reference is not None:
                reference = context.pair_logps(self._proxy_reference, batch)
            else:
                reference = batch["reference"]
        return (proxy["chosen_logps"] - reference["chosen_logps"]) - (proxy["rejected_logps"] - reference["rejected_logps"])

    def release(self) -> None:
        self._proxy = None
        self._proxy_reference = None
