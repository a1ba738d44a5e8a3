"""Bad inputs give clear errors that name the file or field at fault."""

from __future__ import annotations

import json
import os

import pytest
import torch
from model_test_utils import tiny_hf_model
from safetensors.torch import load_file, save_file

from vllm_core.attention.backends.reference import ReferenceAttentionBackend
from vllm_core.config import ModelConfig
from vllm_core.model_executor.loader import get_model, load_arch_config, resolve_model


def load(folder: str, load_format: str = "auto"):
    return get_model(ModelConfig(model=folder, dtype="float32", load_format=load_format),
                     ReferenceAttentionBackend, torch.device("cpu"))


@pytest.fixture(scope="module")
def saved(tmp_path_factory) -> str:
    folder = str(tmp_path_factory.mktemp("good"))
    tiny_hf_model("llama", num_hidden_layers=1).save_pretrained(folder)
    return folder


def copy_folder(src: str, dst) -> str:
    os.makedirs(dst, exist_ok=True)
    for name in os.listdir(src):
        with open(os.path.join(src, name), "rb") as f_in, open(dst / name, "wb") as f_out:
            f_out.write(f_in.read())
    return str(dst)


def test_missing_path():
    with pytest.raises(FileNotFoundError, match="does not exist"):
        resolve_model("/nonexistent/model-dir")


def test_empty_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="no config.json"):
        resolve_model(str(tmp_path))


def test_several_gguf_files(tmp_path):
    (tmp_path / "a.gguf").write_bytes(b"")
    (tmp_path / "b.gguf").write_bytes(b"")
    with pytest.raises(ValueError, match="several .gguf"):
        resolve_model(str(tmp_path))


def test_corrupted_safetensors_names_file(saved, tmp_path):
    folder = copy_folder(saved, tmp_path / "bad")
    with open(os.path.join(folder, "model.safetensors"), "wb") as f:
        f.write(b"\x00garbage" * 10)
    with pytest.raises(ValueError, match="corrupted safetensors file .*model.safetensors"):
        load(folder)


def test_truncated_safetensors_names_file(saved, tmp_path):
    folder = copy_folder(saved, tmp_path / "trunc")
    path = os.path.join(folder, "model.safetensors")
    data = open(path, "rb").read()
    with open(path, "wb") as f:
        f.write(data[: len(data) // 2])
    with pytest.raises(ValueError, match="model.safetensors"):
        load(folder)


def test_pickle_only_folder_is_refused(saved, tmp_path):
    folder = copy_folder(saved, tmp_path / "bin")
    os.remove(os.path.join(folder, "model.safetensors"))
    (tmp_path / "bin" / "pytorch_model.bin").write_bytes(b"not loaded")
    with pytest.raises(ValueError, match="pytorch_model.bin.*Convert them to safetensors"):
        load(folder)


def test_missing_shard_named(saved, tmp_path):
    folder = copy_folder(saved, tmp_path / "sharded")
    index = {"metadata": {}, "weight_map": {"model.norm.weight": "model-00002-of-00002.safetensors"}}
    (tmp_path / "sharded" / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(FileNotFoundError, match="model-00002-of-00002.safetensors"):
        load(folder)


def test_missing_tensor_listed(saved, tmp_path):
    folder = copy_folder(saved, tmp_path / "partial")
    path = os.path.join(folder, "model.safetensors")
    tensors = load_file(path)
    del tensors["model.layers.0.self_attn.k_proj.weight"]
    save_file(tensors, path)
    with pytest.raises(ValueError, match="missing 1 tensor.*k_proj"):
        load(folder)


def test_shape_mismatch(saved, tmp_path):
    folder = copy_folder(saved, tmp_path / "shape")
    cfg = json.load(open(os.path.join(folder, "config.json")))
    cfg["intermediate_size"] += 8
    json.dump(cfg, open(os.path.join(folder, "config.json"), "w"))
    with pytest.raises(ValueError, match="down_proj.weight.* has shape .*expected"):
        load(folder)


def test_bad_config_json(tmp_path):
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(ValueError, match="config.json is not valid JSON"):
        load_arch_config(str(tmp_path))


def test_unknown_architecture_lists_supported(saved, tmp_path):
    folder = copy_folder(saved, tmp_path / "arch")
    cfg = json.load(open(os.path.join(folder, "config.json")))
    cfg["architectures"] = ["MambaForCausalLM"]
    json.dump(cfg, open(os.path.join(folder, "config.json"), "w"))
    with pytest.raises(ValueError, match="MambaForCausalLM.*supported: .*LlamaForCausalLM"):
        load(folder)


def test_unsupported_rope_and_activation(tmp_path):
    base = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": 10,
            "hidden_size": 8, "intermediate_size": 8, "num_hidden_layers": 1,
            "num_attention_heads": 2}
    (tmp_path / "config.json").write_text(json.dumps({**base, "rope_scaling": {
        "rope_type": "yarn", "factor": 4.0}}))
    with pytest.raises(ValueError, match="rope_type 'yarn' is not supported"):
        load_arch_config(str(tmp_path))
    (tmp_path / "config.json").write_text(json.dumps({**base, "hidden_act": "gelu"}))
    with pytest.raises(ValueError, match="hidden_act 'gelu'"):
        load_arch_config(str(tmp_path))
    del base["vocab_size"]
    (tmp_path / "config.json").write_text(json.dumps(base))
    with pytest.raises(ValueError, match="vocab_size"):
        load_arch_config(str(tmp_path))


def test_corrupted_gguf_names_file(tmp_path):
    path = tmp_path / "broken.gguf"
    path.write_bytes(b"GGUF" + b"\xff" * 64)
    with pytest.raises(ValueError, match="broken.gguf"):
        load_arch_config(str(path))


def test_bad_load_format(saved):
    with pytest.raises(ValueError, match="load_format"):
        load(saved, load_format="pt")
    with pytest.raises(ValueError, match="load_format='gguf'"):
        load_arch_config(saved, "gguf")
