"""Does ``torch.compile`` pay for training steps here? Eager versus compiled, side by side in one run.

    python -m bench.compile [--model smollm2_135m] [--pairs 32] [--batch-size 16] [--repeats 4]

Times the training step's work (packed policy log-probs, DPO loss, backward) over the same batches of the
built-in data, with the decoder eager and with ``torch.compile(decoder.forward, dynamic=True)`` (packed rows
change width from batch to batch, so shapes are dynamic). Passes alternate (eager, compiled, eager, ...) and the
fastest of ``--repeats`` is kept for each, so drift of the machine's speed hits both alike; the one-off
compilation (the first compiled pass, with an empty compilation cache) is reported separately. The batches carry constant reference log-probs:
the timing does not depend on their values. The table is printed and appended to ``bench/RESULTS.md``.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
import time
from pathlib import Path

# a cold compilation cache, so that the first compiled pass shows the whole compilation time (set before torch)
os.environ["TORCHINDUCTOR_CACHE_DIR"] = tempfile.mkdtemp(prefix="bench-compile-inductor-")

import torch  # noqa: E402

from bench.common import append_result, machine, markdown, train_config  # noqa: E402
from prefalign.scoring.influence import PairLosses  # noqa: E402
from prefalign.run_setup import setup_run  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2_135m")
    parser.add_argument("--pairs", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=4)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)

    cfg = train_config([f"model={args.model}", f"data.max_train_pairs={max(args.pairs, 64)}"], Path(tempfile.mkdtemp()) / "run")
    setup = setup_run(cfg)
    model = setup.source.load_model()
    model.train()
    dataset = setup.datamodule.datasets["train"]
    n_pairs = min(args.pairs, len(dataset))
    batches = []
    for start in range(0, n_pairs, args.batch_size):
        batch = setup.datamodule.collate([dataset[i] for i in range(start, min(start + args.batch_size, n_pairs))])
        size = len(batch["pair_ids"])
        batch["reference"] = {"chosen_logps": torch.full((size,), -50.0), "rejected_logps": torch.full((size,), -60.0)}
        batches.append(batch)
    losses = PairLosses(model, setup.loss, setup.logp_settings)
    decoder = model.get_decoder()
    eager_forward = decoder.forward
    compiled_forward = torch.compile(eager_forward, dynamic=True)

    def one_pass() -> float:
        start = time.perf_counter()
        for batch in batches:
            losses(batch).sum().backward()
            model.zero_grad(set_to_none=True)
        return time.perf_counter() - start

    one_pass()  # warm-up of the eager path (allocator, threads), not counted
    decoder.forward = compiled_forward
    compile_pass = one_pass()  # compiles (and recompiles for the first dynamic shapes)
    times: dict[str, list[float]] = {"eager": [], "torch.compile": []}
    for _ in range(args.repeats):
        for name, forward in (("eager", eager_forward), ("torch.compile", compiled_forward)):
            decoder.forward = forward
            times[name].append(one_pass())
    decoder.forward = eager_forward

    eager, compiled = min(times["eager"]), min(times["torch.compile"])
    rows = [
        {"mode": "eager", "seconds": eager, "pairs_per_s": n_pairs / eager, "speed_vs_eager": 1.0},
        {"mode": "torch.compile (after compilation)", "seconds": compiled, "pairs_per_s": n_pairs / compiled,
         "speed_vs_eager": eager / compiled},
        {"mode": "torch.compile, first pass (compilation included)", "seconds": compile_pass,
         "pairs_per_s": n_pairs / compile_pass, "speed_vs_eager": eager / compile_pass},
    ]
    table = markdown(rows)
    print(table)
    settings = {"model": args.model, "pairs": n_pairs, "batch_size": args.batch_size, "repeats": args.repeats,
                "pack_length": cfg.pack_length, "work": "policy log-probs + DPO loss + backward"}
    append_result("Training step: eager vs torch.compile", "python -m bench.compile " + " ".join(sys.argv[1:]),
                  settings, table, machine())


if __name__ == "__main__":
    main()
