#!/usr/bin/env bash
# The whole GPU table of issue 9 in one device call: SD1.5-sized at 512 px and SDXL-sized at 1024 px (random
# weights, nothing downloaded), batch 1 and 8, bf16 then fp16; in this order: plain loop / ours (defaults) /
# unet-graphs (first case, batch 1: the whole UNet compiled as one graph, with CUDA graphs) / unet (the same without
# them) / graphs (first case, batch 1) / blocks (compiled transformer blocks) / lowmem (bf16: gradient
# checkpointing + 8-bit AdamW), compiled variants reading their losses every 10 steps; each with steps/s, images/s,
# CUDA peak and the ratio to plain.
# First, bench/compile_check.py on SD1.5 at 512 px, batch 1, float32: do inductor's CUDA kernels give the eager
# LoRA gradients? For one compiled block (at most CHECK_S seconds, default 60), with the block input as the host
# passes it and contiguous as training passes it; then for the whole UNet as training compiles it (at most
# UNET_CHECK_S seconds, default 120). 0 skips a check. Last, only when PROFILE_S is set (it was measured on
# 2026-11-28), a torch.profiler comparison of plain and ours (SD1.5 512 px, batch 1, bf16): CPU time, aten calls
# and kernel launches per step. Then, only when GUARDS_S is set, bench/guards.py on SD1.5 512 px, batch 1, bf16,
# unet-graphs: steps that skip dynamo's guards once settled against steps that check them all, in one run.
# Not run on the CPU machine: it needs a GPU.
#
# Prepare here, in the project root (the device machine has torch and transformers but cannot download):
#   ../shared/device/wheels.sh                          # diffusers + lycoris-lora into .whl/
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#     --platform manylinux_2_24_x86_64 -d .whl bitsandbytes==0.50.2   # 8-bit AdamW for lowmem (43 MB)
# Then call the device tool's `run` with
#   command: bash bench/gpu_table.sh      carry: [".whl"]      timeout_s: 590
# Table children stop at BUDGET_S seconds (default 380) and keep the rows they printed; the profile gets at most
# PROFILE_S seconds (default 0: skipped). Each row is printed as it is measured, and the log comes back as
# $OUT/gpu_table.log. Extra arguments go to bench/train.py's table (e.g. --steps 40).
set -uo pipefail
cd "$(dirname "$0")/.."
log="${OUT:-.}/gpu_table.log"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH="/tmp/site:$PWD" PYTHONUNBUFFERED=1 OMP_WAIT_POLICY=PASSIVE
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>&1 | tee "$log"
python3 -c "import torch, diffusers, lycoris; print('torch', torch.__version__, 'diffusers', diffusers.__version__,
'lycoris', lycoris.__version__ if hasattr(lycoris, '__version__') else '?')" 2>&1 | tee -a "$log"
python3 -c "import bitsandbytes; print('bitsandbytes', bitsandbytes.__version__)" 2>&1 | tail -1 | tee -a "$log"
check() {  # seconds, then compile_check.py's arguments
  [ "$1" != 0 ] || return 0
  local limit=$1
  shift
  timeout "$limit" python3 bench/compile_check.py --device cuda --size sd15 --resolution 512 --batches 1 "$@" \
    2>&1 | grep -v Warning | tee -a "$log"
}
check "${CHECK_S:-60}" --unit blocks
check "${UNET_CHECK_S:-120}" --unit unet --layouts contiguous
python3 bench/train.py --gpu-table --budget-s "${BUDGET_S:-380}" "$@" 2>&1 | tee -a "$log"
if [ "${PROFILE_S:-0}" != 0 ]; then
  timeout "${PROFILE_S}" python3 bench/train.py --device cuda --size sd15 --resolution 512 --batch 1 \
    --steps 12 --warmup 6 --profile 4 --precision bf16 --variants plain,ours 2>&1 | tee -a "$log"
fi
if [ "${GUARDS_S:-0}" != 0 ]; then
  timeout "${GUARDS_S}" python3 bench/guards.py --device cuda --size sd15 --resolution 512 --precision bf16 \
    --variant unet-graphs --steps 90 --threads 0 2>&1 | grep -v Warning | tee -a "$log"
fi
