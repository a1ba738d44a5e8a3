"""The parallel flags: -tp / -pp / --distributed-executor-backend reach ParallelConfig, several
ranks default to the mp executor, and 'uni' with several ranks is refused;
--ray-placement-strategy reaches it (PACK by default, Ray's names only)."""

from __future__ import annotations

import argparse
import json

import pytest

from vllm_core.engine.arg_utils import EngineArgs


@pytest.fixture
def folder(tmp_path) -> str:
    cfg = dict(architectures=["LlamaForCausalLM"], model_type="llama", vocab_size=128,
               hidden_size=64, intermediate_size=128, num_hidden_layers=4,
               num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    return str(tmp_path)


def parse(argv: list[str]) -> EngineArgs:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model")
    EngineArgs.add_cli_args(parser)
    return EngineArgs.from_cli_args(parser.parse_args(argv))


def test_flags_reach_the_parallel_config(folder):
    args = parse(["--model", folder, "--load-format", "dummy", "-tp", "2", "-pp", "2"])
    config, _ = args.create_engine_config()
    par = config.parallel
    assert (par.tensor_parallel_size, par.pipeline_parallel_size) == (2, 2)
    assert par.world_size == 4 and par.distributed_executor_backend == "mp"
    config, _ = parse(["--model", folder, "--load-format", "dummy"]).create_engine_config()
    assert config.parallel.distributed_executor_backend == "uni"


def test_uni_with_several_ranks_is_refused(folder):
    args = parse(["--model", folder, "--load-format", "dummy", "--tensor-parallel-size", "2",
                  "--distributed-executor-backend", "uni"])
    with pytest.raises(ValueError, match="'uni' runs one rank.*needs 'mp'"):
        args.create_engine_config()
    with pytest.raises(SystemExit):
        parse(["--distributed-executor-backend", "threads"])


def test_ray_placement_strategy_reaches_the_config(folder):
    args = parse(["--model", folder, "--load-format", "dummy", "-tp", "2",
                  "--distributed-executor-backend", "ray",
                  "--ray-placement-strategy", "STRICT_SPREAD"])
    config, _ = args.create_engine_config()
    assert config.parallel.ray_placement_strategy == "STRICT_SPREAD"
    config, _ = parse(["--model", folder, "--load-format", "dummy"]).create_engine_config()
    assert config.parallel.ray_placement_strategy == "PACK"          # the default
    with pytest.raises(SystemExit):
        parse(["--ray-placement-strategy", "RANDOM"])
    with pytest.raises(ValueError, match="ray_placement_strategy.*PACK, SPREAD"):
        EngineArgs(model=folder, ray_placement_strategy="pack").create_engine_config()
