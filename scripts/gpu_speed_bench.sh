#!/usr/bin/env bash
# Speed measurements on one GPU (issue 12), from the repository root; results in $OUT/results.tar.gz, the log
# in $OUT/log.txt.
# STAGES picks the parts, which run in this file's order (default: identity probe trials reference bench):
#   identity   reference identity, fp32, tiny and Sonata-size (scripts/reference_identity.py); cidentity: compiled
#   lnorm      the Triton LayerNorm's tests on CUDA, its host cost a call and its device time against torch's per level
#              (scripts/layer_norm_bench.py)
#   launch     host time to issue one op, same shape against a new shape each call (scripts/launch_cost.py)
#   overheads  the garbage collector's and spconv's allocator callbacks' share of a step (scripts/step_overheads.py)
#   ctests     the Triton kernels' tests (latent attention, ReLU-linear, gathered conv, LayerNorm, launcher) and those of
#              GEM's adapters, the gathered conv, autocast_off and the methods, on CUDA
#   ksweep     the Context Adapter's kernels per projection setting (scripts/context_kernel_sweep.py; SWEEP_ARGS)
#   gab        the step with small levels gathered instead of spconv, per GATHER_MAX_SITES value in turns
#              (scripts/gather_levels_ab.py; GAB_VALUES default "0 16384 65536", GAB_WORKLOADS; GAB_SETTING
#              module:NAME for another integer setting, several separated by spaces timed one after another;
#              GAB_SET: integer settings held for all, as SIDE_SET; GAB_ROUNDS, default 5)
#   probe      the trainer's step on fixed / new / repeated batch sizes (scripts/shape_probe.py); cprobe: compiled
#   trials     GEM and LoRA gpu_smoke trials with nvidia-smi sampling (scripts/trial_probe.py); ctrials: compiled
#   ptrials    the same at the paper suite's step (8 micro-batches of 3, Mix3D) on 72 dense rooms, 3 epochs,
#              once per PASSES value (train.micro_batches_per_pass, default "1 4")
#   loader     the paper-shaped suite's training loader, scenes/s with 1 and 12 workers (scripts/loader_throughput.py)
#   eval       validation per train.val_batch_size (VAL_BATCH="1 4 8") and Sonata's voting test per
#              train.test_fragments_per_pass (VOTING="1 4 8"), seconds a scene (scripts/eval_bench.py)
#   gconv      the CPE's conv per level by spconv, gathered, and gathered by the Triton kernel (scripts/gather_conv_bench.py)
#   latent     GEM's kernels' tests on CUDA (the Context Adapter core, the Spatial Adapter's ReLU + up-projection, triton_launch),
#              and the Context Adapter core per level, torch against the kernels (scripts/latent_attention_bench.py)
#   gsweep     the kernel's device time per level and tile setting against gather-then-matmul (the same, --sweep)
#   conv       spconv's backward against ours per level (scripts/conv_backward_bench.py); rconv: deepest level first
#   host       the host's time per function (scripts/host_profile.py)
#   kprof      kernels, host ops and device idle gaps of one step per workload (scripts/kernel_profile.py,
#              KPROF_WORKLOADS, default "frozen:infer:3 frozen:train:3 gem:train:3"; KPROF_TOP rows, default 30;
#              KPROF_ANATOMY: ranges whose first calls are listed with the ops inside them, separated by "|";
#              KPROF_SET: integer settings made first, as SIDE_SET)
#   reference  the reference's bench (scripts/reference_bench.py, checkout in $REF)
#   bench      `peftbench bench`, fp16, profiled, beside the reference (BF16=1 adds a bf16 run)
#   side       the reference's workloads, ours and METHODS' timed in turns in one process, ratios round by round
#              (scripts/side_by_side.py, ROUNDS default 7)
#   sideab     the same from the checkout in $BASE (e.g. `git archive` of an older commit, git-ignored) and from
#              this tree, alternately, AB_TURNS times (default 2): two commits' ratios on one machine; SIDE_SET:
#              integer settings for this tree's runs (side_by_side.py --set, e.g. "module:NAME=1 module:OTHER=1")
#   wgrad      bench rows (ABMETHODS, default frozen gem full) with trainable conv weights' gradients by spconv
#              and by gathered matmuls
#   compile    the bench with --compile
# TRIALS picks the trials (PROFILE_STEP: the step a trial profiles, after so many), METHODS / CMETHODS the bench's
# methods, BS the batch sizes, STEPS the timed steps.
# Needs .gpu/spconv-cu126-py312.tar.xz (../shared/gpu/make-spconv-bundle.sh) and $REF (default
# .reference/sonata: facebookresearch/sonata, git-ignored).
set -u -o pipefail
OUT=${OUT:-/tmp/out}; REF=${REF:-.reference/sonata}; GPU_BUNDLE=${GPU_BUNDLE:-.gpu/spconv-cu126-py312.tar.xz}
mkdir -p "$OUT" /tmp/site
python3 -c "import tarfile, sys; tarfile.open(sys.argv[1]).extractall('/tmp/site')" "$GPU_BUNDLE"
export PYTHONUNBUFFERED=1 PYTHONPATH=/tmp/site:$PWD
LOG=$OUT/log.txt; F="USDT|is_fx_tracing|_warn_once|acc_events"; T0=$(date +%s)
pack() {  # the device tool returns at most 8 files: everything but the logs in one archive, also when killed
  (cd "$OUT" && find . -type f ! -name log.txt ! -name stdout.txt ! -name results.tar.gz > /tmp/packed.txt \
    && [ -s /tmp/packed.txt ] && tar czf results.tar.gz -T /tmp/packed.txt && xargs rm -f < /tmp/packed.txt \
    && find . -mindepth 1 -type d -empty -delete)
}
trap pack EXIT
trap "exit 143" TERM INT  # so a timeout still packs (after the running stage, which has its own timeout)
stamp() { echo "== $1 at $(( $(date +%s) - T0 )) s" | tee -a "$LOG"; }
has() { case " ${STAGES:-identity probe trials reference bench} " in *" $1 "*) return 0;; esac; return 1; }
has identity && stamp identity && timeout 150 python3 scripts/reference_identity.py --reference "$REF" --configs tiny sonata --device cuda --flash \
  --json "$OUT/ident.json" 2>&1 | grep -Ev "$F" | tail -15 | tee -a "$LOG"
has cidentity && stamp "identity, compiled" && timeout 300 python3 scripts/reference_identity.py --reference "$REF" --configs tiny \
  --device cuda --backends spconv --compile --json "$OUT/ident_compiled.json" 2>&1 | grep -Ev "$F" | tail -15 | tee -a "$LOG"
has lnorm && stamp "layer norm" && (timeout 120 python3 -m pytest -q -p no:cacheprovider tests/test_triton_layer_norm.py 2>&1 | tail -3; \
  timeout 120 python3 scripts/layer_norm_bench.py --json "$OUT/lnorm.json" 2>&1) | grep -Ev "$F" | tee -a "$LOG"
has launch && stamp "launch cost" && timeout 60 python3 scripts/launch_cost.py --json "$OUT/launch.json" 2>&1 | grep -Ev "$F" | tee -a "$LOG"
has overheads && stamp "step overheads" && timeout 200 python3 scripts/step_overheads.py --workloads ${OVERHEAD_WORKLOADS:-frozen:train:3 gem:train:3} ${OVERHEAD_ARGS:-} \
  --json "$OUT/overheads.json" 2>&1 | grep -Ev "$F" | tee -a "$LOG"
LATENT_TESTS="tests/test_triton_launch.py tests/test_triton_latent_attention.py tests/test_latent_attention.py
  tests/test_gem_precision.py tests/test_triton_relu_linear.py tests/test_no_grad_memo.py"
has ctests && stamp "CUDA tests" && timeout 200 python3 -m pytest -q -p no:cacheprovider $LATENT_TESTS \
  tests/test_triton_gather_conv.py tests/test_gather_conv.py tests/test_triton_layer_norm.py tests/test_autocast_off.py \
  tests/test_methods.py 2>&1 | tail -15 | tee -a "$LOG"
has ksweep && stamp "context kernels sweep" && timeout 240 python3 scripts/context_kernel_sweep.py ${SWEEP_ARGS:-} \
  --json "$OUT/sweep.json" 2>&1 | grep -Ev "$F" | tee -a "$LOG"
if has gab; then
  for setting in ${GAB_SETTING:-peftbench.backbone.sparse_conv:GATHER_MAX_SITES}; do
    stamp "in turns: $setting" && timeout 240 python3 scripts/gather_levels_ab.py --values ${GAB_VALUES:-0 16384 65536} \
      ${GAB_WORKLOADS:+--workloads $GAB_WORKLOADS} --setting "$setting" ${GAB_SET:+--set $GAB_SET} --rounds ${GAB_ROUNDS:-5} \
      --json "$OUT/gab_${setting##*:}.json" 2>&1 | grep -Ev "$F" | tee -a "$LOG"
  done
fi
# the GPU smoke suite with spconv (conv_backend auto) and 12 loader workers
sed -e 's/conv_backend: torch/conv_backend: auto/' -e 's/num_workers: 2 /num_workers: 12 /' suites/gpu_smoke.yaml > /tmp/gpu_speed.yaml
sed -e 's/^  amp: true/  amp: true\n  compile: true/' /tmp/gpu_speed.yaml > /tmp/gpu_speed_c.yaml
probe() {  # $1: suite, $2: json suffix
  stamp "shape probe $2" && timeout 200 python3 scripts/shape_probe.py "$1" --batches 12 --workers 12 --json "$OUT/shape$2.json" 2>&1 \
    | grep -Ev "$F" | grep -v "^ops_" | tee -a "$LOG"
}
trials() {  # $1: suite, $2: json suffix
  for method in ${TRIALS:-gem lora}; do
    stamp "trial $method$2"
    # a fresh Triton cache a trial: its entries' times say which kernels compiled when (against step_end_unix)
    rm -rf /tmp/triton_cache && TRITON_CACHE_DIR=/tmp/triton_cache \
    timeout 200 python3 scripts/trial_probe.py "$1" --method $method --seed 0 --smi --profile-step ${PROFILE_STEP:-20} \
      --json "$OUT/probe_$method$2.json" 2>&1 \
      | grep -Ev "$F" | grep -E "step_ms_median|eff/|time/|_pct" | tee -a "$LOG"
    find /tmp/triton_cache -name "*.json" ! -name "__grp__*" -printf "%T@ %P\n" 2>/dev/null | sort -n > "$OUT/compiles_$method$2.txt"
  done
}
# paper-shaped: the paper suite's step (24 scenes = 8 micro-batches of 3, Mix3D 0.8) on 72 dense rooms, 3 epochs
sed -e 's/gpu-target-dense, scenes: {train: 24, val: 4}/gpu-target-paper, scenes: {train: 72, val: 4}/' \
  -e 's/^  epochs: 4/  epochs: 3/' -e 's/^  batch_size: 2/  batch_size: 24\n  accumulate: 8\n  mix_prob: 0.8/' \
  -e 's/^  eval_every: 4 /  eval_every: 3 /' /tmp/gpu_speed.yaml > /tmp/gpu_speed_paper.yaml
has loader && stamp loader && timeout 200 python3 scripts/loader_throughput.py /tmp/gpu_speed_paper.yaml --workers 1 12 \
  --json "$OUT/loader.json" 2>&1 | grep -Ev "$F" | tee -a "$LOG"
has probe && probe /tmp/gpu_speed.yaml ""
has cprobe && probe /tmp/gpu_speed_c.yaml _compiled
has trials && trials /tmp/gpu_speed.yaml ""
has ctrials && trials /tmp/gpu_speed_c.yaml _compiled
if has ptrials; then  # PASSES: train.micro_batches_per_pass values to run the paper-shaped trials with
  for passes in ${PASSES:-1 4}; do
    sed -e "s/^  accumulate: 8/  accumulate: 8\n  micro_batches_per_pass: $passes/" /tmp/gpu_speed_paper.yaml > /tmp/gpu_speed_paper_$passes.yaml
    trials /tmp/gpu_speed_paper_$passes.yaml _paper_p$passes
  done
fi
has host && stamp "host profile" && timeout 240 python3 scripts/host_profile.py --half-frozen \
  --workloads ${HOST_WORKLOADS:-frozen:infer:1 frozen:train:3 gem:train:3} --json "$OUT/host.json" 2>&1 | grep -Ev "$F" | tee -a "$LOG"
IFS='|' read -r -a ANATOMY <<< "${KPROF_ANATOMY:-}"  # range names hold spaces
has kprof && stamp "kernel profile" && timeout 240 python3 scripts/kernel_profile.py --steps 10 --top "${KPROF_TOP:-30}" \
  --workloads ${KPROF_WORKLOADS:-frozen:infer:3 frozen:train:3 gem:train:3} ${KPROF_ANATOMY:+--anatomy "${ANATOMY[@]}"} \
  ${KPROF_SET:+--set $KPROF_SET} \
  --json "$OUT/kprof.json" 2>&1 | grep -Ev "$F" > "$OUT/kprof.txt"; has kprof && grep "^==" "$OUT/kprof.txt" | tee -a "$LOG"
has eval && stamp eval && timeout 300 python3 scripts/eval_bench.py --val-batch ${VAL_BATCH:-1 4 8} \
  --per-pass ${VOTING:-1 4 8} --scenes 8 --json "$OUT/eval.json" 2>&1 | grep -Ev "$F" | tee -a "$LOG"
has gconv && stamp "gathered conv kernel" && (timeout 120 python3 -m pytest -q -p no:cacheprovider tests/test_triton_gather_conv.py 2>&1 | tail -3; \
  timeout 150 python3 scripts/gather_conv_bench.py --json "$OUT/gconv.json" 2>&1) | grep -Ev "$F" | tee -a "$LOG"
has latent && stamp "latent attention kernels" && (timeout 150 python3 -m pytest -q -p no:cacheprovider $LATENT_TESTS \
  2>&1 | tail -3; \
  timeout 150 python3 scripts/latent_attention_bench.py --json "$OUT/latent.json" 2>&1) | grep -Ev "$F" | tee -a "$LOG"
has gsweep && stamp "gathered conv kernel tiles" && timeout 300 python3 scripts/gather_conv_bench.py --sweep \
  --json "$OUT/gsweep.json" 2>&1 | grep -Ev "$F" | tee -a "$LOG"
has conv && stamp "conv backward" && timeout 120 python3 scripts/conv_backward_bench.py --json "$OUT/conv.json" 2>&1 \
  | grep -Ev "$F" | tee -a "$LOG"
has rconv && stamp "conv backward, deepest level first" && timeout 120 python3 scripts/conv_backward_bench.py --reverse \
  --json "$OUT/conv_reverse.json" 2>&1 | grep -Ev "$F" | tee -a "$LOG"
COMMON="--points 102400 --batch-sizes ${BS:-1 3} --steps ${STEPS:-5}"
has reference && stamp reference && timeout 100 python3 scripts/reference_bench.py --reference "$REF" $COMMON --dtypes fp16 --json /tmp/ref.json 2>&1 | grep -Ev "$F" | tee -a "$LOG"
has bench && stamp "bench fp16" && timeout 220 python3 -m peftbench.cli bench --backbone sonata $COMMON --dtypes fp16 --profile \
  --methods ${METHODS:-frozen gem lora adapter prompt full} --report "$OUT/bench" --reference /tmp/ref.json 2>&1 | grep -Ev "$F" | tee -a "$LOG"
has side && stamp "side by side" && timeout 400 python3 scripts/side_by_side.py --reference "$REF" --points 102400 \
  --batch-sizes ${BS:-1 3} --methods ${METHODS:-gem lora adapter prompt} --rounds ${ROUNDS:-7} --json "$OUT/side.json" 2>&1 \
  | grep -Ev "$F" | tee -a "$LOG"
if has sideab; then
  ref_abs=$(realpath "$REF")
  for turn in $(seq "${AB_TURNS:-2}"); do
    for tree in "$(realpath "$BASE")" "$PWD"; do
      name=$([ "$tree" = "$PWD" ] && echo new || echo base)
      stamp "side by side, $name, turn $turn" && (cd "$tree" && PYTHONPATH=/tmp/site:$tree timeout 300 python3 \
        scripts/side_by_side.py --reference "$ref_abs" --points 102400 --batch-sizes ${BS:-3} --methods ${METHODS:-gem} \
        --rounds ${ROUNDS:-5} --json "$OUT/sideab_${name}_$turn.json" \
        $([ "$name" = new ] && [ -n "${SIDE_SET:-}" ] && echo --set $SIDE_SET)) 2>&1 | grep -Ev "$F" | tee -a "$LOG"
    done
  done
fi
ab() {  # $1: a setting of peftbench.backbone.spconv_conv, $2...: its values; bench rows (ABMETHODS) per value
  local attr=$1; shift
  for value in "$@"; do
    stamp "bench, $attr = $value" && timeout 150 python3 -c "import sys, peftbench.backbone.spconv_conv as s
setattr(s, sys.argv[1], sys.argv[2])
from peftbench.cli import main
sys.exit(main(sys.argv[3:]))" "$attr" "$value" bench --backbone sonata $COMMON --dtypes fp16 --profile \
      --methods ${ABMETHODS:-frozen gem full} --out "$OUT/bench_${attr}_$value.json" 2>&1 | grep -Ev "$F" | tee -a "$LOG"
  done
}
has wgrad && ab WEIGHT_GRAD_BY spconv gather
if has compile; then
  stamp "bench fp16, compiled"
  timeout 400 python3 -m peftbench.cli bench --backbone sonata $COMMON --dtypes fp16 --compile \
    --methods ${CMETHODS:-frozen gem} --out "$OUT/bench_compiled.json" 2>&1 | grep -Ev "$F" | tee -a "$LOG"
fi
if [ -n "${BF16:-}" ]; then
  stamp "bench bf16"
  timeout 90 python3 -m peftbench.cli bench --backbone sonata $COMMON --dtypes bf16 --methods frozen gem full \
    --out /tmp/bench_bf16.json 2>&1 | grep -Ev "$F" | tee -a "$LOG"
fi
stamp done
