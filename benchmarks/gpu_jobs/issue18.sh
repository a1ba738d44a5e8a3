#!/usr/bin/env bash
# Issue 18 (mixture-of-experts) on one H200, from the repo root, worst case ~8 minutes:
#   1. the fused-MoE Triton kernel tests on the GPU (-m gpu and the shared kernel tests:
#      bf16, Qwen3-30B-A3B-sized shapes, CUDA-graph capture/replay);
#   2. a short tile sweep of the fused-MoE kernels for the Qwen3-30B-A3B expert shape, whose
#      best tiles (tiles.json) the throughput run then uses (VLLM_MOE_TILE_CONFIG);
#   3. Qwen3-30B-A3B shape (random bf16 weights), 256 requests x 512 prompt / 256 output:
#      vllm-core vs HF generate_batch and static generate (HF on the first 16 requests, 70 s
#      each), and
#      the roofline (active-parameter and touched-expert bytes per decode step).
# Needs nothing carried (no extra wheels). Writes everything under "$OUT/issue18/".
# A failing step does not stop the next one.
set -x
out="${OUT:?OUT must be set}/issue18"
mkdir -p "$out"
export PYTHONUNBUFFERED=1
echo "=== issue18: environment"
python3 -c "import torch, triton, transformers, vllm_core, vllm_core_triton; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(), 'triton', triton.__version__, 'transformers', transformers.__version__)" 2>&1 | tee "$out/env.txt"
nvidia-smi --query-gpu=name,memory.used,memory.total --format=csv 2>&1 | tee -a "$out/env.txt"

echo "=== issue18: fused-MoE kernel tests (GPU)"
timeout -k 10 70 python3 -m pytest -q -p no:cacheprovider platforms/triton/tests/test_fused_moe_kernels.py \
    2>&1 | tail -40 | tee "$out/tests.log"
echo "=== issue18: kernel tests rc=${PIPESTATUS[0]}"

echo "=== issue18: tile sweep (Qwen3-30B-A3B experts: E=128, H=2048, I=768, top-8, bf16)"
timeout -k 10 80 python3 benchmarks/moe_tile_sweep.py --quick --tokens 1,64,256,2048 --reps 5 \
    --write "$out/tiles.json" > "$out/tile_sweep.jsonl" 2> "$out/tile_sweep.err"
echo "=== issue18: tile sweep rc=$?"
grep -E '"moe_tile_(best|entry)"' "$out/tile_sweep.jsonl"
tail -5 "$out/tile_sweep.err"

echo "=== issue18: throughput gpu-moe (Qwen3-30B-A3B shape, 256 x 512/256)"
if [ -s "$out/tiles.json" ]; then export VLLM_MOE_TILE_CONFIG="$out/tiles.json"; fi
echo "VLLM_MOE_TILE_CONFIG=${VLLM_MOE_TILE_CONFIG:-<default tiles>}"
timeout -k 10 310 python3 benchmarks/throughput_moe_gpu.py --peer-requests 16 --timeout 70 \
    --core-timeout 150 \
    --output "$out/throughput.jsonl" 2>&1 | tail -40 | tee "$out/throughput.log"
echo "=== issue18: throughput rc=${PIPESTATUS[0]}"

echo "=== issue18: done"
cat "$out"/throughput.jsonl 2>/dev/null
exit 0
