#!/usr/bin/env bash
# The GPU measurements of docs/performance.md in one call: for the reduced Mobile DeepLab, the
# Mobile DeepLab alpha 1.0 and the U-Net ifC 16 at 512x512, batch 4, float32, the step alone and
# the real training loop (lesion_jax), beside PyTorch eager and torch.compile(reduce-overhead)
# on the same layers (docs/pytorch_reference.py); then the ISIC-shaped loop at 256x256 with XLA
# command buffers and several steps per dispatch; last, the three models at 512x512 again with
# both (the launch-bound step's two remedies), then with Adam on one flat vector as well.
# Results land in $OUT (or ./gpu_results), each stage's as it ends, so a run cut short by the
# time limit still returns what it measured.
#
# On the project's lent H200 (see the device tool's README), from the repository root:
#   ../shared/tools/device-wheels.sh            # once, here: the wheels the GPU image lacks
#   device run, carry [".whl"], timeout_s 560:  bash docs/gpu_benchmark.sh
# jax, torch and isic (the issue's figures) take about 8 minutes (an estimate: not yet run on
# the GPU); jax_fast and jax_flat come last, so a time limit cuts them first.
# `bash docs/gpu_benchmark.sh jax` (or torch, isic, jax_fast, jax_flat) runs one.
# GPU_BENCHMARK_SMOKE=1 runs every stage at toy sizes (a check on a CPU).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-gpu_results}"
mkdir -p "$OUT"
if [ -d .whl ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl && export PYTHONPATH="/tmp/site:$PWD"
fi
export PYTHONPATH="${PYTHONPATH:-$PWD}" PYTHONUNBUFFERED=1 LESION_JAX_HUGE_PAGES=0
PY="${PYTHON:-python3}"
TORCH_PY="${TORCH_PYTHON:-$PY}"  # the GPU image has torch beside JAX; on a CPU, a torch venv
STAGES="${*:-jax torch isic jax_fast jax_flat}"
SIZE=512; ISIC=256; STEPS=20; WARMUP=3; IMAGES=100; ISIC_IMAGES=400; TORCH_DEVICE=cuda
if [ -n "${GPU_BENCHMARK_SMOKE:-}" ]; then
  SIZE=64; ISIC=64; STEPS=2; WARMUP=1; IMAGES=20; ISIC_IMAGES=20; TORCH_DEVICE=cpu
fi
MODELS='("deeplab_mobilenetv2:alpha=0.35", "deeplab_mobilenetv2:alpha=1.0", "unet:ifc=16")'
BUFFERS="FUSION,CUBLAS,CUBLASLT,CUSTOM_CALL,CUDNN,WHILE,CONDITIONAL"
# The launch-bound step's two remedies: XLA's CUDA graphs, and 4 steps per device call.
BUFFERS_FLAG="--config.xla_gpu_command_buffer=$BUFFERS"
K4_FLAG="--config.training.steps_per_dispatch=4"

{ date -u; nvidia-smi --query-gpu=name,driver_version --format=csv,noheader 2>/dev/null
  "$PY" -c "import jax; print('jax', jax.__version__, jax.devices())"
  "$TORCH_PY" -c "import torch; print('torch', torch.__version__)" 2>/dev/null; } | tee "$OUT/environment.txt"

bench() {  # bench NAME OVERRIDES...: one benchmark run, its tables copied to $OUT
  local name=$1; shift
  rm -rf "/tmp/bench_$name"
  "$PY" launch.py --config configs/benchmark.py --workdir "/tmp/bench_$name" \
    --config.data.image_size=$SIZE --config.benchmark.steps=$STEPS \
    --config.benchmark.warmup_steps=$WARMUP --config.benchmark.pipeline_images=$IMAGES "$@" \
    2>&1 | tail -n 8
  cp "/tmp/bench_$name/benchmark.md" "$OUT/$name.md" 2>/dev/null
  cp "/tmp/bench_$name/benchmark.json" "$OUT/$name.json" 2>/dev/null
}

for stage in $STAGES; do
  case $stage in
    jax)  # the three models: step alone and loop, XLA's defaults
      bench jax_512 --config.benchmark.models="$MODELS" ;;
    torch)  # PyTorch on the identical layers: eager, then CUDA graphs through torch.compile
      "$TORCH_PY" docs/pytorch_reference.py --device $TORCH_DEVICE --model all --image_size $SIZE \
        --batch 4 --steps $STEPS --warmup $WARMUP --compile none,reduce-overhead \
        2>&1 | tee "$OUT/torch_512.txt" ;;
    isic)  # the ISIC-shaped loop at 256: defaults, command buffers, 4 steps per call, both
      SIZE=$ISIC IMAGES=$ISIC_IMAGES
      M='("deeplab_mobilenetv2:alpha=0.35",)'
      bench isic_256 --config.benchmark.models="$M"
      bench isic_256_buffers --config.benchmark.models="$M" "$BUFFERS_FLAG"
      bench isic_256_k4 --config.benchmark.models="$M" "$K4_FLAG"
      bench isic_256_both --config.benchmark.models="$M" "$BUFFERS_FLAG" "$K4_FLAG" ;;
    jax_fast)  # the three models at 512 with command buffers and 4 steps per call
      bench jax_512_both --config.benchmark.models="$MODELS" "$BUFFERS_FLAG" "$K4_FLAG" ;;
    jax_flat)  # the same, with Adam as one fused update (config.optimizer.flatten)
      bench jax_512_flat --config.benchmark.models="$MODELS" "$BUFFERS_FLAG" "$K4_FLAG" \
        --config.optimizer.flatten=True ;;
    *) echo "unknown stage $stage (jax, torch, isic, jax_fast, jax_flat)"; exit 2 ;;
  esac
done
ls -l "$OUT"
