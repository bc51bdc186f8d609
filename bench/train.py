"""DPO training throughput: prefalign versus TRL's ``DPOTrainer``, side by side in one invocation.

    pip install trl            # in the benchmark environment only; not a dependency of prefalign
    python -m bench.train [--model smollm2_135m] [--pairs 384] [--batch-size 8] [--pack-length 256]
                          [--head-chunk-tokens 128] [--precision fp32|bf16]

    # on a GPU (no hub needed): Qwen3-0.6B's shape with random weights, bf16 in both frameworks
    python -m bench.train --model random_qwen3_0_6b --precision bf16 --batch-size 16 --head-chunk-tokens 1024

Both frameworks get the same model (the converted checkpoint of ``--model``), the same pairs of the built-in data
(TRL receives each prompt already rendered with the chat template, and each completion as text, to which it adds
the EOS token, so both tokenise to the same ids; the script counts the pairs where they do), the same batch size,
maximum length, precision (``--precision``: float32, or bfloat16 weights and matmuls in both: prefalign
``model.dtype=bfloat16 trainer.precision=bf16-true``, TRL the model loaded in bfloat16 with ``bf16=True``),
optimiser (AdamW, constant learning rate, no weight decay, gradient clipping at 1.0) and one epoch. Each
throughput run is a separate process (so peak memory is its own) and counts the whole epoch's wall time,
reference log-probs included: prefalign with an empty reference cache, TRL both with
``precompute_ref_log_probs=True`` and ``False`` (the faster one is the baseline of the speed-up). prefalign runs
twice: with padded batches (``pack_length=null``, prompt shared) and with ``pack_length=--pack-length``
(padding-free packing, prompt shared, for the training steps and the reference pass; the default of
``conf/train.yaml``); with ``--head-chunk-tokens``, a third time packed with the vocabulary step in chunks
(``head_chunk_tokens``: no tokens x vocabulary tensor kept, logits recomputed in the backward pass), to show its
memory and its speed. The correctness check runs prefalign with the config's default. Both run on the GPU when
there is one (Lightning's ``accelerator=auto``; TRL's default), else on the CPU.

Model FLOPs utilisation (``nominal_mfu``): the same nominal work for every row, ``8 N`` FLOPs per token of the
concatenated sequences (``6 N`` for the policy's forward and backward, ``2 N`` for the reference's forward; ``N``
the parameters of the weight matmuls, the output projection included, the input embedding not; attention's
``QK^T`` and ``AV`` not counted), divided by the epoch's wall time and by the dense matmul peak of the run's
precision measured on this machine before and after the workers (the higher). It is a throughput in the units
of the hardware, proportional to pairs/s: work a framework skips (prefalign runs each prompt once) is not
subtracted.

Before timing, a correctness check runs both on one fixed batch for two steps: the first-step loss (log 2 for
any DPO run, since policy = reference), the first-step mean log-probs of chosen and rejected (which depend on
tokenisation and the log-prob computation) and the second-step loss (which depends on the gradient and the update).
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from bench.common import (
    append_result,
    machine,
    markdown,
    matmul_peak,
    run_worker,
    train_config,
)

LR = 1e-5
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
MAX_LENGTH = 128
EVAL_BATCH_SIZE = 32  # the built-in data's eval_batch_size: prefalign's reference pass batch


def model_dir(model: str, cache_dir: Path) -> Path:
    """The model as a plain Hugging Face checkpoint folder (TRL loads it from there)."""
    cfg = train_config([f"model={model}", f"paths.cache_dir={cache_dir}"], Path(tempfile.mkdtemp()))
    from hydra.utils import instantiate

    source = instantiate(cfg.model)
    folder = cache_dir / "bench-models" / model
    if not (folder / "config.json").exists():
        source.load_model().save_pretrained(folder)
        source.load_tokenizer().save_pretrained(folder)
    return folder


def prefalign_overrides(args: argparse.Namespace, pairs: int, folder: Path, cache: Path) -> list[str]:
    return [
        f"model={args.model}",
        f"model.path={folder}",
        f"data.max_train_pairs={pairs}",
        "data.max_val_pairs=8",
        f"data.batch_size={args.batch_size}",
        f"data.eval_batch_size={EVAL_BATCH_SIZE}",
        f"data.max_length={MAX_LENGTH}",
        f"optimizer.lr={LR}",
        "optimizer.weight_decay=0.0",
        "~scheduler",
        "++trainer.max_epochs=1",
        "++trainer.limit_val_batches=0",
        "++trainer.gradient_clip_val=1.0",
        "++trainer.log_every_n_steps=1",
        "logger=csv",
        f"paths.cache_dir={cache}",
        *(["model.dtype=bfloat16", "++trainer.precision=bf16-true"] if args.precision == "bf16" else ["model.dtype=float32"]),
    ]


def trl_rows(pairs: int) -> list[dict[str, str]]:
    """The built-in pairs as TRL text rows: the prompt rendered with the chat template, completions as text."""
    from prefalign.data.sources import BuiltinSource
    from prefalign.data.tokenization import PairTokenizer
    from prefalign.models import EmbeddedModel

    tokenizer = EmbeddedModel(name="tokenizer").load_tokenizer()
    rendering = PairTokenizer(tokenizer, MAX_LENGTH, MAX_LENGTH - 1)
    return [
        {"prompt": rendering.prompt_text(p.prompt), "chosen": p.chosen, "rejected": p.rejected}
        for p in BuiltinSource().load("train")[:pairs]
    ]


def trl_trainer(args: argparse.Namespace, folder: Path, rows: list[dict[str, str]], precompute: bool, epochs: int, out: Path):
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import DPOConfig, DPOTrainer

    model = AutoModelForCausalLM.from_pretrained(folder, dtype=DTYPES[args.precision])
    tokenizer = AutoTokenizer.from_pretrained(folder)
    config = DPOConfig(
        output_dir=str(out),
        per_device_train_batch_size=args.batch_size,
        learning_rate=LR,
        lr_scheduler_type="constant",
        weight_decay=0.0,
        max_grad_norm=1.0,
        num_train_epochs=epochs,
        max_length=MAX_LENGTH,
        beta=0.1,
        loss_type=["sigmoid"],
        precompute_ref_log_probs=precompute,
        precompute_ref_batch_size=EVAL_BATCH_SIZE,  # as large as prefalign's reference pass (its fastest setting)
        logging_steps=1,
        report_to="none",
        save_strategy="no",
        use_cpu=not torch.cuda.is_available(),
        bf16=args.precision == "bf16",
        seed=42,
        dataloader_num_workers=0,
    )
    return DPOTrainer(model=model, args=config, train_dataset=Dataset.from_list(rows), processing_class=tokenizer)


def matmul_parameters(folder: Path) -> int:
    """Parameters of the weight matmuls of the checkpoint in ``folder``: all but the input embedding (a lookup);
    a tied output projection counted once, as a matmul. Counted on the meta device (no weights loaded)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(folder))
    embedding = model.get_input_embeddings().weight
    head = model.get_output_embeddings().weight
    total = sum(p.numel() for p in model.parameters()) - embedding.numel()
    return total + (head.numel() if head is embedding else 0)


def peak_rss_mb() -> float:
    """This process's peak resident memory. ``VmHWM`` belongs to the current address space; ``ru_maxrss`` would
    also count the parent's memory at fork time, which Linux carries across ``exec``."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def worker(args: argparse.Namespace) -> None:
    """One timed epoch in this process; prints a JSON line with the measurements."""
    folder, cache = Path(args.folder), Path(args.cache)
    start = time.perf_counter()
    if args.worker.startswith("prefalign"):
        from prefalign.run_setup import setup_run
        from prefalign.trainer import build_trainer, run_module

        out = Path(tempfile.mkdtemp())
        overrides = prefalign_overrides(args, args.pairs, folder, cache)
        # the padded row pins pack_length=null; the packed rows set it (the config's default is 256)
        overrides.append(f"pack_length={args.pack_length}" if args.worker != "prefalign" else "pack_length=null")
        if args.worker == "prefalign-chunked":
            overrides.append(f"head_chunk_tokens={args.head_chunk_tokens}")
        if args.trainer:  # another strategy on one device (bench.strategies: ddp, fsdp)
            overrides += [f"trainer={args.trainer}", "trainer.devices=1", "++trainer.limit_val_batches=0"]
        cfg = train_config(overrides, out)
        setup = setup_run(cfg)
        model = setup.load_model()
        setup.attach_reference(model)
        trainer = build_trainer(cfg, out, checkpoints=False)
        trainer.fit(run_module(cfg, model, setup.loss, setup.logp_settings), datamodule=setup.datamodule)
        steps = trainer.global_step
        loss = float(trainer.callback_metrics["train/loss"]) if "train/loss" in trainer.callback_metrics else None
    else:
        trainer = trl_trainer(args, folder, trl_rows(args.pairs), args.worker == "trl-precompute", 1, Path(tempfile.mkdtemp()))
        trainer.train()
        steps = trainer.state.global_step
        loss = next((entry["loss"] for entry in reversed(trainer.state.log_history) if "loss" in entry), None)
    elapsed = time.perf_counter() - start
    peak_mb = peak_rss_mb()
    if torch.cuda.is_available():
        peak_mb = torch.cuda.max_memory_allocated() / 2**20
    print("RESULT " + json.dumps({"seconds": elapsed, "steps": steps, "peak_mb": peak_mb, "last_loss": loss}))


def token_counts(pairs: int) -> tuple[int, float]:
    """Tokens of the concatenated sequences, 2|x| + |y_w| + |y_l| per pair (the usual DPO accounting)."""
    from prefalign.data.sources import BuiltinSource
    from prefalign.data.tokenization import PairTokenizer
    from prefalign.models import EmbeddedModel

    tokenization = PairTokenizer(EmbeddedModel(name="t").load_tokenizer(), MAX_LENGTH, MAX_LENGTH - 1)
    total = 0
    for pair in BuiltinSource().load("train")[:pairs]:
        tokens = tokenization(pair)
        total += 2 * len(tokens.prompt_ids) + len(tokens.chosen_ids) + len(tokens.rejected_ids)
    return total, total / pairs


def correctness(args: argparse.Namespace, folder: Path, cache: Path) -> dict[str, Any]:
    """Both frameworks on one fixed batch for two steps: losses and log-probs side by side."""
    import pandas as pd

    from prefalign.data.tokenization import PairTokenizer
    from prefalign.run_setup import setup_run
    from prefalign.trainer import build_trainer, run_module

    out = Path(tempfile.mkdtemp())
    overrides = prefalign_overrides(args, args.batch_size, folder, cache / "check") + ["++trainer.max_epochs=2"]
    cfg = train_config(overrides, out)
    setup = setup_run(cfg)
    model = setup.load_model()
    setup.attach_reference(model)
    trainer = build_trainer(cfg, out, checkpoints=False)
    trainer.fit(run_module(cfg, model, setup.loss, setup.logp_settings), datamodule=setup.datamodule)
    ours = pd.read_csv(out / "csv" / "metrics.csv").dropna(subset=["train/loss"]).reset_index(drop=True)

    rows = trl_rows(args.batch_size)
    trl = trl_trainer(args, folder, rows, precompute=False, epochs=2, out=Path(tempfile.mkdtemp()))
    # do both tokenise every pair to the same ids?
    tokenization = PairTokenizer(setup.tokenizer, MAX_LENGTH, MAX_LENGTH - 1)
    same = 0
    for pair, example in zip(setup.datamodule.pairs["train"], trl.train_dataset):
        tokens = tokenization(pair)
        same += (tokens.prompt_ids, tokens.chosen_ids, tokens.rejected_ids) == (
            example["prompt_ids"], example["chosen_ids"], example["rejected_ids"]
        )
    trl.train()
    history = [entry for entry in trl.state.log_history if "loss" in entry]
    return {
        "identically_tokenised_pairs": f"{same}/{len(rows)}",
        "step1_loss": (float(ours["train/loss"][0]), float(history[0]["loss"])),
        "step1_logps_chosen": (float(ours["train/logps/chosen"][0]), float(history[0]["logps/chosen"])),
        "step1_logps_rejected": (float(ours["train/logps/rejected"][0]), float(history[0]["logps/rejected"])),
        "step2_loss": (float(ours["train/loss"][1]), float(history[1]["loss"])),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2_135m")
    parser.add_argument("--pairs", type=int, default=384)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--skip-check", action="store_true")
    parser.add_argument("--precision", choices=sorted(DTYPES), default="fp32", help="weights and matmuls in both frameworks")
    parser.add_argument(
        "--pack-length", type=int, default=256, help="also time prefalign with packed batches of this many tokens (0: not)"
    )
    parser.add_argument(
        "--head-chunk-tokens", type=int, default=0,
        help="also time prefalign packed with the vocabulary step in chunks of this many tokens (0: not)",
    )
    parser.add_argument(
        "--worker", choices=["prefalign", "prefalign-packed", "prefalign-chunked", "trl-precompute", "trl-online"],
        help=argparse.SUPPRESS,
    )
    parser.add_argument("--folder", help=argparse.SUPPRESS)
    parser.add_argument("--cache", help=argparse.SUPPRESS)
    parser.add_argument("--trainer", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args)
        return
    try:
        import trl
    except ImportError:
        sys.exit("bench/train.py compares with TRL: pip install trl (in the benchmark environment only)")

    work = Path(tempfile.mkdtemp(prefix="bench-train-"))
    folder = model_dir(args.model, work / "cache")
    check = {} if args.skip_check else correctness(args, folder, work / "cache")
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    peaks = [matmul_peak(device, DTYPES[args.precision])]
    tokens, tokens_per_pair = token_counts(args.pairs)
    measured = {}
    names = ["prefalign", "prefalign-packed", "prefalign-chunked", "trl-precompute", "trl-online"]
    if not args.pack_length:
        names = [name for name in names if name not in ("prefalign-packed", "prefalign-chunked")]
    if not args.head_chunk_tokens:
        names = [name for name in names if name != "prefalign-chunked"]
    for name in names:
        command = [sys.executable, "-m", "bench.train", "--worker", name, "--model", args.model, "--pairs", str(args.pairs),
                   "--batch-size", str(args.batch_size), "--folder", str(folder), "--cache", str(work / f"cache-{name}"),
                   "--pack-length", str(args.pack_length), "--head-chunk-tokens", str(args.head_chunk_tokens),
                   "--precision", args.precision]
        measured[name] = run_worker(name, command)
    peaks.append(matmul_peak(device, DTYPES[args.precision]))
    flops_per_token = 8 * matmul_parameters(folder)
    fastest_trl = min(("trl-precompute", "trl-online"), key=lambda name: measured[name]["seconds"])
    rows = []
    for name, values in measured.items():
        rows.append({
            "framework": {"prefalign": "prefalign, padded batches", "prefalign-packed": f"prefalign, pack_length={args.pack_length}",
                          "prefalign-chunked": f"prefalign, pack_length={args.pack_length}, head_chunk_tokens={args.head_chunk_tokens}",
                          "trl-precompute": "TRL DPOTrainer, precompute_ref_log_probs=True",
                          "trl-online": "TRL DPOTrainer, precompute_ref_log_probs=False"}[name],
            "epoch_wall_s": values["seconds"],
            "steps": values["steps"],
            "pairs_per_s": args.pairs / values["seconds"],
            "tokens_per_s": tokens / values["seconds"],
            "peak_memory_mb": values["peak_mb"],
            "nominal_mfu": flops_per_token * tokens / values["seconds"] / max(peaks),
            "speed_vs_fastest_trl": measured[fastest_trl]["seconds"] / values["seconds"],
        })
    table = markdown(rows) + (
        f"\n\nDense {args.precision} matmul peak on {device.type}: {max(peaks) / 1e9:.1f} GFLOP/s (before the workers "
        f"{peaks[0] / 1e9:.1f}, after {peaks[1] / 1e9:.1f}); nominal work {flops_per_token / 1e9:.3f} GFLOP per token."
    )
    if check:
        table += "\n\nCorrectness check (one fixed batch, two steps; prefalign, TRL):\n\n" + markdown(
            [{"quantity": key, "prefalign": value[0] if isinstance(value, tuple) else value,
              "TRL": value[1] if isinstance(value, tuple) else "",
              "abs difference": abs(value[0] - value[1]) if isinstance(value, tuple) else ""} for key, value in check.items()]
        )
    print(table)
    settings = {"model": args.model, "pairs": args.pairs, "batch_size": args.batch_size, "max_length": MAX_LENGTH, "lr": LR,
                "precision": args.precision, "epochs": 1, "tokens_per_pair_concatenated": round(tokens_per_pair, 1),
                "trl": trl.__version__, "fastest_trl": fastest_trl, "pack_length": args.pack_length,
                "head_chunk_tokens": args.head_chunk_tokens}
    append_result("DPO training: prefalign vs TRL DPOTrainer", "python -m bench.train " + " ".join(sys.argv[1:]), settings,
                  table, machine())


if __name__ == "__main__":
    main()
