"""Hugging Face Hub model IDs (``org/name``) resolved to a local snapshot folder.

``locate_model(model, revision, download_dir)`` returns ``model`` unchanged when it names an
existing local path (or is None: the embedded default model); otherwise, when it looks like a
Hub repository id, ``huggingface_hub.snapshot_download`` finds it in the Hugging Face cache
(``download_dir``, else ``HF_HUB_CACHE`` / ``HF_HOME``) or downloads it, honouring
``HF_HUB_OFFLINE`` and ``HF_TOKEN`` itself. Only the files a model needs are fetched: configs,
tokenizer files, safetensors weights, or else the GGUF files. Offline (or without network) and
not cached, the error says so and how to fix it.

The environment is read by ``huggingface_hub`` (its documented variables), not here.
"""

from __future__ import annotations

import os
import re

_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
CONFIG_PATTERNS = ["*.json", "*.jinja", "tokenizer.model", "*.txt"]
WEIGHT_PATTERNS = ["*.safetensors"]


def is_repo_id(model: str) -> bool:
    """``org/name`` that is not a local path."""
    return bool(_REPO_ID.match(model)) and not os.path.exists(os.path.expanduser(model))


def locate_model(model: str | None, revision: str | None = None,
                 download_dir: str | None = None) -> str | None:
    """A local path for ``model`` (see the module docstring). ``FileNotFoundError`` with the
    reason when a Hub id cannot be found in the cache and cannot be downloaded."""
    if model is None or not is_repo_id(model):
        if revision is not None and model is not None and os.path.exists(model):
            raise ValueError(f"--revision {revision!r} applies to Hub model ids; {model!r} is a "
                             "local path")
        return model
    try:
        from huggingface_hub import list_repo_files, snapshot_download
        from huggingface_hub.errors import (
            GatedRepoError,
            LocalEntryNotFoundError,
            OfflineModeIsEnabled,
            RepositoryNotFoundError,
            RevisionNotFoundError,
        )
    except ImportError as e:                       # pragma: no cover - a core dependency
        raise FileNotFoundError(f"model {model!r} is not a local path, and huggingface_hub is "
                                "not installed to fetch it from the Hub") from e
    where = f"{model}" + (f" (revision {revision})" if revision else "")

    def fetch(patterns: list[str], local_only: bool = False) -> str:
        return snapshot_download(model, revision=revision, cache_dir=download_dir,
                                 allow_patterns=patterns, local_files_only=local_only)

    try:
        try:
            folder = fetch(CONFIG_PATTERNS + WEIGHT_PATTERNS, local_only=True)
            if _has_weights(folder):
                return folder
        except LocalEntryNotFoundError:
            pass
        files = list_repo_files(model, revision=revision)
        weights = WEIGHT_PATTERNS if any(f.endswith(".safetensors") for f in files) else \
            [f for f in files if f.endswith(".gguf")][:1]
        return fetch(CONFIG_PATTERNS + weights)
    except (OfflineModeIsEnabled, LocalEntryNotFoundError) as e:
        raise FileNotFoundError(
            f"model {where} is not in the Hugging Face cache "
            f"({download_dir or 'HF_HUB_CACHE'}) and cannot be downloaded "
            f"({'HF_HUB_OFFLINE is set' if _offline() else 'no network'}). Download it where "
            f"there is access (huggingface-cli download {model}) and copy the cache, or pass a "
            "local folder.") from e
    except GatedRepoError as e:
        raise FileNotFoundError(f"model {where} is gated: accept its terms on the Hub and set "
                                "HF_TOKEN") from e
    except RevisionNotFoundError as e:
        raise FileNotFoundError(f"model {model!r} has no revision {revision!r}") from e
    except RepositoryNotFoundError as e:
        raise FileNotFoundError(f"model {model!r} is neither a local path nor a Hub repository "
                                "(or it is private: set HF_TOKEN)") from e


def _has_weights(folder: str) -> bool:
    names = os.listdir(folder)
    return any(n.endswith((".safetensors", ".gguf")) for n in names)


def _offline() -> bool:
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE)
