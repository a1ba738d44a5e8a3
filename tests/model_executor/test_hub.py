"""Hub model ids resolve through a Hugging Face cache (built here in a temp folder, no
network): the cache, HF_HUB_OFFLINE, --revision, --download-dir, and a clear error when the
model is neither cached nor downloadable."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from vllm_core.engine.arg_utils import EngineArgs
from vllm_core.model_executor.default_model import default_model_path
from vllm_core.model_executor.hub import locate_model

REPO = "test-org/tiny-gguf"
MAIN = "a" * 40
V1 = "b" * 40


def make_hub_cache(root: Path) -> Path:
    """huggingface_hub's cache layout: refs/<branch> -> commit, snapshots/<commit>/files."""
    repo = root / "models--test-org--tiny-gguf"
    for ref, commit in (("main", MAIN), ("v1", V1)):
        (repo / "refs").mkdir(parents=True, exist_ok=True)
        (repo / "refs" / ref).write_text(commit)
        snap = repo / "snapshots" / commit
        snap.mkdir(parents=True)
        os.symlink(default_model_path(), snap / f"model-{ref}.gguf")
    return root


@pytest.fixture
def offline(monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)


def test_hub_id_resolves_from_the_cache_offline(tmp_path, offline):
    cache = make_hub_cache(tmp_path / "hub")
    folder = locate_model(REPO, download_dir=str(cache))
    assert folder == str(cache / "models--test-org--tiny-gguf" / "snapshots" / MAIN)
    by_branch = locate_model(REPO, revision="v1", download_dir=str(cache))
    assert by_branch.endswith(V1)
    assert locate_model(REPO, revision=V1, download_dir=str(cache)).endswith(V1)


def test_local_paths_and_default_pass_through(tmp_path):
    assert locate_model(None) is None
    assert locate_model(str(tmp_path)) == str(tmp_path)


def test_not_cached_offline_is_a_clear_error(tmp_path, offline):
    with pytest.raises(FileNotFoundError, match="not in the Hugging Face cache.*HF_HUB_OFFLINE"):
        locate_model("test-org/absent", download_dir=str(tmp_path))


def test_engine_config_from_a_hub_id(tmp_path, offline):
    cache = make_hub_cache(tmp_path / "hub")
    config, _ = EngineArgs(model=REPO, revision="v1", download_dir=str(cache),
                           max_model_len=256).create_engine_config()
    assert config.model.model.endswith(f"{V1}/model-v1.gguf")
    assert config.model.served_model_name == REPO


def test_serve_resolves_hub_ids_through_the_environment(tmp_path):
    """HF_HUB_CACHE and HF_HUB_OFFLINE as a user sets them, in a fresh interpreter."""
    cache = make_hub_cache(tmp_path / "hub")
    env = {**os.environ, "HF_HUB_CACHE": str(cache), "HF_HUB_OFFLINE": "1"}
    code = ("from vllm_core.engine.arg_utils import EngineArgs as E; import sys; "
            "c, _ = E(model=sys.argv[1], max_model_len=128).create_engine_config(); "
            "print(c.model.model)")
    done = subprocess.run([sys.executable, "-c", code, REPO], env=env, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().endswith(f"{MAIN}/model-main.gguf")
    missing = subprocess.run([sys.executable, "-m", "vllm_core.entrypoints.cli.main", "serve",
                              "test-org/absent", "--port", "0"], env=env, capture_output=True,
                             text=True, timeout=120)
    assert missing.returncode == 1
    assert "not in the Hugging Face cache" in missing.stderr
    assert "Traceback" not in missing.stderr
