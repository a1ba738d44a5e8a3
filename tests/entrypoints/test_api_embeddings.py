"""/v1/embeddings with the openai SDK (which asks for base64 by default) and raw floats,
against the real server process (fake and real engines)."""

from __future__ import annotations

import math

import httpx
import openai
import pytest


def test_embeddings_sdk_base64_equals_float(server, client, model):
    texts = ["The capital of France is Paris.", "Cats sleep a lot."]
    resp = client.embeddings.create(model=model, input=texts)          # base64 on the wire
    assert [d.index for d in resp.data] == [0, 1]
    vectors = [d.embedding for d in resp.data]
    assert all(abs(math.sqrt(sum(v * v for v in vec)) - 1.0) < 1e-4 for vec in vectors)
    raw = httpx.post(f"{server.url}/v1/embeddings", headers=server.headers(),
                     json={"model": model, "input": texts, "encoding_format": "float"}).json()
    for ours, plain in zip(vectors, raw["data"]):
        assert max(abs(a - b) for a, b in zip(ours, plain["embedding"])) < 1e-6
    tok = httpx.post(f"{server.url}/tokenize", headers=server.headers(),
                     json={"model": model, "prompt": texts[0]}).json()
    assert resp.usage.prompt_tokens >= tok["count"]


def test_embeddings_pooling_and_normalize_extras(client, model):
    text = "A short sentence about embeddings."
    last = client.embeddings.create(model=model, input=text, encoding_format="float")
    mean = client.embeddings.create(model=model, input=text, encoding_format="float",
                                    extra_body={"pooling": "mean", "normalize": False})
    assert last.data[0].embedding != mean.data[0].embedding
    assert len(last.data[0].embedding) == len(mean.data[0].embedding)


def test_embeddings_bad_input_is_400(client, model):
    with pytest.raises(openai.BadRequestError):
        client.embeddings.create(model=model, input="x", dimensions=8)
    with pytest.raises(openai.BadRequestError):
        client.embeddings.create(model=model, input=[])
