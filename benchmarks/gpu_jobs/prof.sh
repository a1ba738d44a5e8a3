#!/usr/bin/env bash
# Kernel profiles of the runs whose bars are still open (one H200, <= 5 minutes): where the time
# goes in prefill-only and prefill+decode windows (benchmarks/gpu_profile.py), for
#   1. the Qwen3-30B-A3B MoE shape, 256 x 512/256 (issue 18's roofline), after a measured run;
#   2. gpu-8b (issue 11's prefill roofline);
#   3. gpu-8b-b1 with W4A16 (GPTQ layout) weights (issue 15's W4A16 bar).
# Needs nothing carried. Writes "$OUT/prof/*.txt" (kernel tables) and "*.jsonl".
set -x
out="${OUT:?OUT must be set}/prof"
mkdir -p "$out"
export PYTHONUNBUFFERED=1
timeout -k 10 150 python3 benchmarks/throughput_moe_gpu.py --systems vllm-core --core-timeout 140 \
    --profile "$out/moe.txt" --output "$out/moe.jsonl" > "$out/moe.log" 2>&1
echo "=== prof moe rc=$?"; tail -n 3 "$out/moe.log"
timeout -k 10 80 python3 benchmarks/throughput_gpu.py --workload gpu-8b --systems vllm-core \
    --profile "$out/8b.txt" --output "$out/8b.jsonl" > "$out/8b.log" 2>&1
echo "=== prof 8b rc=$?"; tail -n 3 "$out/8b.log"
timeout -k 10 60 python3 benchmarks/throughput_gpu.py --workload gpu-8b-b1 --systems vllm-core \
    --quantization gptq --profile "$out/8b-b1-gptq.txt" --output "$out/8b-b1-gptq.jsonl" \
    > "$out/8b-b1-gptq.log" 2>&1
echo "=== prof 8b-b1-gptq rc=$?"; tail -n 3 "$out/8b-b1-gptq.log"
exit 0
