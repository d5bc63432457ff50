#!/usr/bin/env bash
# GPU check for skclip, on a machine with a CUDA GPU, from the repository root or anywhere:
#
#     bash benchmarks/gpu_check.sh            # PYTHON=/path/to/python to pick an interpreter
#
# 1. Checks that torch can use CUDA. A torch that cannot (a CPU-only build) is never
#    replaced: the script stops and says so. Without torch, it installs PyPI's torch
#    (whose Linux wheels bundle CUDA).
# 2. Installs skclip's other requirements (base + dev extra) only where missing, and
#    skclip itself in editable mode with --no-deps, so pip never touches torch.
#    Offline, it falls back to PYTHONPATH and what is installed.
# 3. Runs the CUDA tests (pytest -m cuda).
# 4. Runs the benchmarks on the GPU and prints every ratio, then a summary:
#    featurizer throughput vs the raw fp16 forward with 16 decode threads (goal >= 0.8),
#    one-image latency, classifier prediction vs the naive formula on the GPU, cached
#    search vs search on embeddings, TipAdapterClassifierCV, Pipeline search vs one pass.
# Each step has a time limit; the whole script stays under 8 minutes. A failed step is
# reported and the others still run; the exit status is non-zero if any step failed.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
PY=${PYTHON:-python3}
LOGS=$(mktemp -d -t skclip-gpu-check-XXXXXX)
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
FAILED=()

step() { printf '\n=== %s  [t=%ss]\n' "$1" "$SECONDS"; }

# run NAME LIMIT_SECONDS COMMAND...: output to the terminal and to $LOGS/NAME.log
run() {
    local name=$1 limit=$2
    shift 2
    local status=0
    timeout --kill-after=10 "$limit" "$@" 2>&1 | tee "$LOGS/$name.log" || status=$?
    if [ "$status" -ne 0 ]; then
        [ "$status" -eq 124 ] && echo "!!! $name: timed out after ${limit}s"
        echo "!!! $name failed (exit status $status)"
        FAILED+=("$name")
    fi
}

step "1/4 GPU and torch"
if ! command -v nvidia-smi >/dev/null; then
    echo "nvidia-smi not found: this does not look like a machine with an NVIDIA GPU." >&2
    exit 2
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
if ! "$PY" -c "import torch" 2>/dev/null; then
    echo "torch is not installed: installing PyPI's torch (Linux wheels bundle CUDA)"
    "$PY" -m pip install --quiet torch
fi
"$PY" - <<'EOF'
import sys

import torch

print(f"python {sys.version.split()[0]}, torch {torch.__version__}, built for CUDA "
      f"{torch.version.cuda}, CUDA available: {torch.cuda.is_available()}")
if not torch.cuda.is_available():
    sys.exit("torch cannot use CUDA here (a CPU-only build, or no driver). It is left alone: "
             "install a CUDA build of torch first, then run this script again.")
print("device 0:", torch.cuda.get_device_name(0))
EOF

step "2/4 install what is missing (torch untouched)"
REQS="$LOGS/requirements.txt"
"$PY" - "$REQS" <<'EOF'
# skclip's requirements (base + dev extra) that are not satisfied yet, torch excluded.
import re
import sys
from importlib import metadata

try:
    import tomllib
except ImportError:  # Python 3.10
    import tomli as tomllib

project = tomllib.load(open("pyproject.toml", "rb"))["project"]
wanted = project["dependencies"] + project["optional-dependencies"]["dev"]
missing = []
for req in wanted:
    name = re.split(r"[\[<>=!~; ]", req, maxsplit=1)[0]
    if name.lower() == "torch":
        continue
    try:
        metadata.version(name)
    except metadata.PackageNotFoundError:
        missing.append(req)
open(sys.argv[1], "w").write("\n".join(missing) + ("\n" if missing else ""))
print("missing:", ", ".join(missing) if missing else "nothing")
EOF
if [ -s "$REQS" ]; then
    "$PY" -m pip install --quiet -r "$REQS" \
        || echo "(could not install every requirement; tests that need them will say so)"
fi
"$PY" -m pip install --quiet --no-deps --no-build-isolation -e . 2>/dev/null \
    || echo "(editable install not possible here; skclip is imported from $PWD via PYTHONPATH)"
"$PY" -c "import skclip, torch; print('skclip', skclip.__version__, 'from', skclip.__file__); \
assert torch.cuda.is_available(), 'torch lost CUDA'"

step "3/4 CUDA tests (pytest -m cuda)"
run cuda-tests 90 "$PY" -m pytest -m cuda -q -p no:cacheprovider tests

step "4/4 benchmarks on the GPU"
run featurizer 120 "$PY" benchmarks/bench_featurizer.py --device cuda --n-jobs 16 \
    --n-images 1000 --batch-size 64 --rounds 5 --goal ">= 0.8" --latency
run classifier 75 "$PY" benchmarks/bench_classifier.py --device cuda --repeat 3
run search 120 "$PY" benchmarks/bench_search.py --device cuda --parts p3,p4,p2 --rounds 3

step "summary: every ratio (logs in $LOGS)"
grep -h -i "ratio\|^machine\|passed\|failed" "$LOGS"/*.log || true
printf '\ntotal %ss\n' "$SECONDS"
if [ "${#FAILED[@]}" -ne 0 ]; then
    echo "FAILED steps: ${FAILED[*]}"
    exit 1
fi
echo "all steps passed"
