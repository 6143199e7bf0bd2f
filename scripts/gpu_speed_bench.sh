#!/usr/bin/env bash
# Speed measurements on one GPU (issue 12), from the repository root; results under $OUT (8 files):
# the reference (scripts/reference_bench.py, checkout in $REF) and `peftbench bench` side by side,
# fp16 (with the profiler breakdown) and bf16, then one GPU-smoke trial with nvidia-smi sampling.
# Needs .gpu/spconv-cu126-py312.tar.xz (../shared/gpu/make-spconv-bundle.sh) and $REF (default
# .reference/sonata: facebookresearch/sonata, git-ignored).
set -u -o pipefail
OUT=${OUT:-/tmp/out}; REF=${REF:-.reference/sonata}; GPU_BUNDLE=${GPU_BUNDLE:-.gpu/spconv-cu126-py312.tar.xz}
mkdir -p "$OUT" /tmp/site
python3 -c "import tarfile, sys; tarfile.open(sys.argv[1]).extractall('/tmp/site')" "$GPU_BUNDLE"
export PYTHONUNBUFFERED=1 PYTHONPATH=/tmp/site:$PWD
LOG=$OUT/log.txt; F="USDT|is_fx_tracing|_warn_once|acc_events"; T0=$(date +%s)
stamp() { echo "== $1 at $(( $(date +%s) - T0 )) s" | tee -a "$LOG"; }
COMMON="--points 102400 --batch-sizes 1 3 --steps 5"
stamp reference
timeout 150 python3 scripts/reference_bench.py --reference "$REF" $COMMON --dtypes fp16 bf16 --json "$OUT/ref.json" 2>&1 | grep -Ev "$F" | tee -a "$LOG"
stamp "bench fp16"
timeout 240 python3 -m peftbench.cli bench --backbone sonata $COMMON --dtypes fp16 --profile \
  --methods ${METHODS:-frozen gem lora adapter prompt full} --report "$OUT/bench" --reference "$OUT/ref.json" 2>&1 | grep -Ev "$F" | tee -a "$LOG"
stamp "bench bf16"
timeout 90 python3 -m peftbench.cli bench --backbone sonata $COMMON --dtypes bf16 --methods frozen gem full \
  --out "$OUT/bench_bf16.json" 2>&1 | grep -Ev "$F" | tee -a "$LOG"
stamp trial
# the GPU smoke suite with spconv (conv_backend auto) and 12 loader workers
sed -e 's/conv_backend: torch/conv_backend: auto/' -e 's/num_workers: 2 /num_workers: 12 /' suites/gpu_smoke.yaml > /tmp/gpu_speed.yaml
nvidia-smi --query-gpu=timestamp,utilization.gpu,memory.used --format=csv,noheader -lms 500 > "$OUT/smi.csv" &
SMI=$!
timeout 100 python3 -m peftbench.cli train /tmp/gpu_speed.yaml --method gem --seed 0 --out /tmp/trial 2>&1 | grep -Ev "$F" | tee -a "$LOG"
kill "$SMI"
cp /tmp/trial/*/result.json "$OUT/trial.json"
stamp done
