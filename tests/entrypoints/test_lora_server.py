"""LoRA adapters through a real server and the real openai client: ``--lora-modules`` adapters
listed in /v1/models with their base as ``parent`` and selected by ``model=<name>`` (tokens
equal PEFT's), ``/v1/load_lora_adapter`` / ``/v1/unload_lora_adapter`` behind the API key,
unknown names 404, a bad adapter 400 while the server keeps serving, per-adapter metrics."""

from __future__ import annotations

import copy

import httpx
import openai
import pytest
import torch
from server_utils import start_server

from vllm_core.config import ModelArchConfig
from vllm_core.lora.testing import write_random_adapter
from vllm_core.model_executor.testing import random_hf_causal_lm, write_wordlevel_tokenizer

CONFIG = dict(vocab_size=256, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
              num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
              tie_word_embeddings=False, bos_token_id=None, eos_token_id=None,
              pad_token_id=None)
ARCH = ModelArchConfig("LlamaForCausalLM", "llama", 256, 64, 96, 2, 4, 2, 16)
PROMPT = [5, 17, 33, 2, 90, 41, 7]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("lora_server")
    folder = str(root / "base")
    hf = random_hf_causal_lm("llama", CONFIG, seed=0, weight_scale=0.1)
    hf.save_pretrained(folder)
    write_wordlevel_tokenizer(folder, 256)
    adapters = [write_random_adapter(str(root / f"ad{i}"), ARCH, rank=8, seed=i, scale=0.3)
                for i in range(2)]
    srv = start_server("real", root, extra=[
        folder, "--dtype", "float32", "--enable-lora", "--max-loras", "2",
        "--max-lora-rank", "8", "--lora-modules", f"sql={adapters[0]}",
        "--kv-cache-space-gib", "0.05", "--served-model-name", "base"])
    yield srv, hf.eval(), adapters, folder
    srv.stop()


@torch.no_grad()
def _greedy(hf, adapter, n=6):
    from peft import PeftModel

    model = hf if adapter is None else PeftModel.from_pretrained(copy.deepcopy(hf), adapter)
    ids = torch.tensor([PROMPT])
    for _ in range(n):
        ids = torch.cat([ids, model(input_ids=ids).logits[0, -1].argmax().view(1, 1)], 1)
    return ids[0, len(PROMPT):].tolist()


def _text(client, model):
    out = client.completions.create(model=model, prompt=PROMPT, max_tokens=6, temperature=0)
    return out.choices[0].text


@pytest.mark.slow
def test_adapters_are_models_selected_by_name(setup):
    srv, hf, adapters, folder = setup
    client = openai.OpenAI(base_url=f"{srv.url}/v1", api_key=srv.api_key, max_retries=0)
    models = {m.id: m for m in client.models.list().data}
    assert set(models) == {"base", "sql"}
    assert models["sql"].model_extra["parent"] == "base"
    assert models["base"].model_extra["parent"] is None

    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(folder)
    base, sql = _text(client, "base"), _text(client, "sql")
    assert base.split() == tok.decode(_greedy(hf, None)).split()
    assert sql.split() == tok.decode(_greedy(hf, adapters[0])).split()
    assert base != sql

    with pytest.raises(openai.NotFoundError):
        _text(client, "nope")

    url, headers = srv.url, srv.headers()
    body = {"lora_name": "chat", "lora_path": adapters[1]}
    assert httpx.post(f"{url}/v1/load_lora_adapter", json=body).status_code == 401
    resp = httpx.post(f"{url}/v1/load_lora_adapter", json=body, headers=headers)
    assert resp.status_code == 200, resp.text
    assert _text(client, "chat").split() == tok.decode(_greedy(hf, adapters[1])).split()
    bad = httpx.post(f"{url}/v1/load_lora_adapter", headers=headers,
                     json={"lora_name": "bad", "lora_path": "/no/such/folder"})
    assert bad.status_code == 400 and "is not a folder" in bad.json()["error"]["message"]
    resp = httpx.post(f"{url}/v1/unload_lora_adapter", json={"lora_name": "chat"},
                      headers=headers)
    assert resp.status_code == 200, resp.text
    with pytest.raises(openai.NotFoundError):
        _text(client, "chat")
    assert httpx.post(f"{url}/v1/unload_lora_adapter", json={"lora_name": "chat"},
                      headers=headers).status_code == 404
    assert _text(client, "sql") == sql                          # still serving
    metrics = httpx.get(f"{url}/metrics").text                  # per-adapter labels
    lines = [ln for ln in metrics.splitlines() if ln.startswith("vllm:lora_num_requests_")]
    assert any('lora_name="sql"' in ln and ln.endswith(" 0.0") for ln in lines), lines
