#!/usr/bin/env bash
# Issue 19 on one H200 (run from the repo root; <= 6 min; no network, no package index):
#   1. GPU parity tests of the new families (Gemma 3 head 64 / 256, Phi-3, Phi-4-mini) on
#      Triton + CUDA graphs, and Gemma 3's sliding-window equivalence (-m gpu);
#   2. Gemma 3 12B shape, random bf16 weights, the gpu-8b workload (256 requests, 512 prompt /
#      256 output tokens): vllm-core vs HF generate_batch (first 128 requests) in the same run,
#      with benchmarks/throughput_gpu.py pointed at a Gemma 3 12B config folder.
#      Its "summary" line's roofline fields are computed for the Llama-3.1-8B shape (that
#      script's fixed roofline model): read only its ratio_vs_hf-batch.
# Everything lands under "$OUT/issue19/" (JSON lines in issue19.jsonl, logs *.log).
# Qwen2.5-VL is not implemented yet, so its benchmark is not part of this job.
set -x
out="${OUT:-/tmp/out}/issue19"
mkdir -p "$out"
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$out/gpu.txt"
python3 -c "import torch, transformers, triton; print(torch.__version__, transformers.__version__, triton.__version__)" | tee -a "$out/gpu.txt"

if [ -z "${ISSUE19_SKIP_TESTS:-}" ]; then     # (the tests also run in gpu_tests.sh)
echo "=== ISSUE19 STEP 1: GPU parity tests"
timeout -k 10 150 python3 -m pytest -q -m gpu -p no:cacheprovider \
    platforms/cuda/tests/test_gpu_new_families.py -x -rA 2>&1 | tail -40 | tee "$out/parity_tests.log"
echo "=== ISSUE19 STEP 1 rc=${PIPESTATUS[0]}"

fi

echo "=== ISSUE19 STEP 2: Gemma 3 12B shape throughput"
model_dir=/tmp/issue19/gemma3-12b-shape
timeout -k 10 120 python3 - "$model_dir" <<'EOF' 2>&1 | tee "$out/model_dir.log"
import json, os, sys
from vllm_core.model_executor.testing import write_wordlevel_tokenizer
folder = sys.argv[1]
os.makedirs(folder, exist_ok=True)
cfg = {"architectures": ["Gemma3ForCausalLM"], "model_type": "gemma3_text",
       "vocab_size": 262208, "hidden_size": 3840, "intermediate_size": 15360,
       "num_hidden_layers": 48, "num_attention_heads": 16, "num_key_value_heads": 8,
       "head_dim": 256, "max_position_embeddings": 131072, "rms_norm_eps": 1e-6,
       "rope_theta": 1000000.0, "rope_local_base_freq": 10000.0,
       "rope_scaling": {"rope_type": "linear", "factor": 8.0}, "sliding_window": 1024,
       "sliding_window_pattern": 6, "query_pre_attn_scalar": 256,
       "hidden_activation": "gelu_pytorch_tanh", "final_logit_softcapping": None,
       "attn_logit_softcapping": None, "tie_word_embeddings": True, "torch_dtype": "bfloat16",
       "bos_token_id": 2, "eos_token_id": 1, "pad_token_id": 0}
json.dump(cfg, open(os.path.join(folder, "config.json"), "w"), indent=1)
if not os.path.isfile(os.path.join(folder, "tokenizer.json")):
    write_wordlevel_tokenizer(folder, cfg["vocab_size"])
print("model folder ready:", folder)
EOF
timeout -k 10 300 python3 benchmarks/throughput_gpu.py --workload gpu-8b \
    --model-dir "$model_dir" --systems vllm-core,hf-batch --peer-requests 128 \
    --timeout 200 --output "$out/gemma3_12b_raw.jsonl" 2>&1 | tee "$out/gemma3_12b.log"
echo "=== ISSUE19 STEP 2 rc=${PIPESTATUS[0]}"
# tag the lines with the model shape they measured
sed 's/^{/{"model_shape": "gemma3-12b", /' "$out/gemma3_12b_raw.jsonl" > "$out/issue19.jsonl" 2>/dev/null
echo "=== ISSUE19 JSON"
cat "$out/issue19.jsonl" 2>/dev/null
echo "=== ISSUE19 DONE"
