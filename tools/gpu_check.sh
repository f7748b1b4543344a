#!/usr/bin/env bash
# The GPU check, one script for a borrowed GPU machine (no package registry there: it runs a
# release binary built elsewhere and the machine's own PyTorch):
#   1. the parity fixtures on the GPU backend (check-loss against the PyTorch/transformers values);
#   2. 20 training steps of the default config, and the same run stopped at 10 and resumed: the
#      records must be identical;
#   3. `qformer bench` at the blip2 shape next to tools/bench_torch.py (PyTorch, autocast) on the
#      same device: pairs/s, peak device memory, model FLOP utilisation.
# Figures go to $OUT/gpu_check.md (a table for docs/BENCHMARKS.md) and $OUT/*.json. A check that
# fails is logged and the later parts still run (a borrowed GPU's minutes are few); the script
# then exits 1 naming every check that failed.
#
#   tools/gpu_check.sh                                      # CUDA, blip2, batch 100, bf16
#   BACKEND=wgpu PRESET=tiny BATCH=8 PRECISION=f16 \
#     TRAIN_SETS="text.tokenizer=data/shapes/vocab.txt model.vocab_size=23 model.bos_token_id=22 train.batch_size=8" \
#     tools/gpu_check.sh                                    # end to end on a CPU (lavapipe)
#
# Environment: BACKEND (cuda), QFORMER (target/release/qformer), PYTHON (python3), PRESET (blip2),
# BATCH (100), TEXT_LEN (32), PRECISION (bf16: qformer's train.precision; PyTorch's autocast takes
# the same, none for f32), PEAK_TFLOPS (989: H100/H200 dense bf16; 67 for their f32),
# BENCH_STEPS (5), TRAIN_SETS (extra `--set key=value` items for the training run, space
# separated), OUT (target/gpu-check).
set -euo pipefail
cd "$(dirname "$0")/.."
BACKEND=${BACKEND:-cuda}
QFORMER=${QFORMER:-target/release/qformer}
PYTHON=${PYTHON:-python3}
PRESET=${PRESET:-blip2}
BATCH=${BATCH:-100}
TEXT_LEN=${TEXT_LEN:-32}
PRECISION=${PRECISION:-bf16}
PEAK_TFLOPS=${PEAK_TFLOPS:-989}
BENCH_STEPS=${BENCH_STEPS:-5}
read -r -a train_sets <<< "${TRAIN_SETS:-}"
OUT=${OUT:-target/gpu-check}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
log() { printf '[%s] %s\n' "$(date +%T)" "$*" | tee -a "$OUT/gpu_check.log"; }
: > "$OUT/gpu_check.log"
if [ ! -d "${XDG_RUNTIME_DIR:-}" ]; then
    XDG_RUNTIME_DIR=$(mktemp -d)
    export XDG_RUNTIME_DIR
fi
"$QFORMER" --version > /dev/null
case $PRECISION in f32) AMP=none ;; bf16 | f16) AMP=$PRECISION ;; *) echo "PRECISION must be f32, bf16 or f16" >&2; exit 2 ;; esac
case $BACKEND in cuda) TORCH_DEVICE=cuda ;; *) TORCH_DEVICE=cpu ;; esac
failed=()
log "backend $BACKEND, preset $PRESET, batch $BATCH, precision $PRECISION, binary $QFORMER"

# 1. Parity: the fixture losses on this backend against the reference's.
for fixture in tests/fixtures/xattn_every_layer tests/fixtures/xattn_every_2_image_ids; do
    name=$(basename "$fixture")
    "$QFORMER" check-loss --backend "$BACKEND" --weights "$fixture/weights.safetensors" --batch "$fixture/batch.safetensors" \
        > "$OUT/parity-$name.json"
    if ! "$PYTHON" - "$fixture/expected.json" "$OUT/parity-$name.json" "$name" <<'PY' | tee -a "$OUT/gpu_check.log"
import json, sys
want = json.load(open(sys.argv[1]))["detached"]
got = json.load(open(sys.argv[2]))
errors = {k: abs(got[k] - want[k]) / max(abs(want[k]), 1e-12) for k in ("loss", "loss_itc", "loss_itm", "loss_itg")}
worst = max(errors.values())
listed = ", ".join(f"{k} {e:.1e}" for k, e in errors.items())
print(f"parity {sys.argv[3]}: largest relative loss error {worst:.2e} ({listed})")
# Float32 rounding of a float64 reference: the flex tests hold 1e-5.
sys.exit(0 if worst < 1e-4 else 1)
PY
    then
        failed+=("parity $name")
    fi
done

# 2. 20 steps of the default config uninterrupted, and 10 + a resume to 20: identical records.
runs="$OUT/runs"
rm -rf "$runs"
train() {
    local extra=()
    for s in "${train_sets[@]}"; do extra+=(--set "$s"); done
    "$QFORMER" train --backend "$BACKEND" --set checkpoint.dir="$runs" --set checkpoint.every=10 --set eval.every=0 \
        --set eval.rerank_every=0 --set log.every=5 --set train.precision="$PRECISION" "${extra[@]}" "$@"
}
start=$(date +%s)
train --set train.run_name=whole --set train.steps=20 > "$OUT/train-whole.log" 2>&1
whole_s=$(($(date +%s) - start))
train --set train.run_name=resumed --set train.steps=10 > "$OUT/train-first.log" 2>&1
train --set train.run_name=resumed --set train.steps=20 --resume "$runs/resumed" > "$OUT/train-resumed.log" 2>&1
if ! "$PYTHON" - "$runs" "$whole_s" <<'PY' | tee -a "$OUT/gpu_check.log"
import json, sys
def records(run):
    keep = ("step", "loss", "loss_itc", "loss_itm", "loss_itg", "grad_norm", "lr", "temp")
    return [{k: r.get(k) for k in keep} for r in map(json.loads, open(f"{sys.argv[1]}/{run}/metrics.jsonl")) if "loss" in r]
whole, resumed = records("whole"), records("resumed")
last = whole[-1]
print(f"train: 20 steps in {sys.argv[2]} s, loss {whole[0]['loss']:.4f} -> {last['loss']:.4f}; resumed at 10 identical: {whole == resumed}")
sys.exit(0 if whole == resumed and len(whole) == 20 else 1)
PY
then
    failed+=("resume")
fi

# 3. Speed and memory next to PyTorch.
log "bench: qformer"
"$QFORMER" bench --backend "$BACKEND" --preset "$PRESET" --batch "$BATCH" --text-len "$TEXT_LEN" --sets itc,itm,itg \
    --steps "$BENCH_STEPS" --precision "$PRECISION" --peak-tflops "$PEAK_TFLOPS" --json > "$OUT/bench-qformer.json"
if "$PYTHON" -c "import torch, transformers" 2> /dev/null; then
    # Autocast is the GPU comparison; on a CPU PyTorch runs f32.
    torch_amp=$([ "$TORCH_DEVICE" = cpu ] && echo none || echo "$AMP")
    log "bench: PyTorch ($TORCH_DEVICE, autocast $torch_amp)"
    "$PYTHON" tools/bench_torch.py --preset "$PRESET" --batch "$BATCH" --text-len "$TEXT_LEN" --steps "$BENCH_STEPS" \
        --device "$TORCH_DEVICE" --amp "$torch_amp" --threads "$(nproc)" > "$OUT/bench-torch.json"
else
    log "bench: PyTorch skipped ($PYTHON has no torch and transformers)"
fi
"$PYTHON" - "$OUT" "$BACKEND" "$PRESET" "$BATCH" "$PRECISION" "$PEAK_TFLOPS" <<'PY' | tee "$OUT/gpu_check.md"
import json, os, sys
out, backend, preset, batch, precision, peak = sys.argv[1:7]
ours = json.load(open(f"{out}/bench-qformer.json"))["steps"][0]
print(f"| {preset}, batch {batch}, {precision} | pairs/s | step ms | peak device MB | model FLOP utilisation (peak {peak} TFLOP/s) |")
print("|---|---|---|---|---|")
mem = ours.get("device_mb")
print(f"| qformer ({backend}) | {ours['pairs_per_s']:.1f} | {ours['median_ms']:.1f} | {mem if mem is None else f'{mem:.0f}'} | {ours['mfu_percent']:.1f} % |")
if os.path.exists(f"{out}/bench-torch.json"):
    torch = json.load(open(f"{out}/bench-torch.json"))
    theirs = torch["steps"][0]
    # The same step's matmul work (qformer's count), at PyTorch's rate.
    mfu = ours["model_gflop"] * theirs["pairs_per_s"] / int(batch) / (float(peak) * 1e3) * 100
    tmem = torch.get("peak_device_mb")
    print(f"| PyTorch {torch['torch']} ({torch['device']}, autocast {torch['amp']}) | {theirs['pairs_per_s']:.1f} | {theirs['median_ms']:.1f} | {tmem if tmem is None else f'{tmem:.0f}'} | {mfu:.1f} % |")
    print(f"\nqformer / PyTorch pairs/s: {ours['pairs_per_s'] / theirs['pairs_per_s']:.2f}x")
PY
log "done: $OUT/gpu_check.md"
if [ ${#failed[@]} -gt 0 ]; then
    log "failed: ${failed[*]}"
    exit 1
fi
