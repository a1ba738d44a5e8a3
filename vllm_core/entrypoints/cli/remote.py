"""``vllm-core chat`` / ``generate --url URL``: stream from a running OpenAI-compatible server
instead of loading the model again (plain httpx and server-sent events; no openai package).

``RemoteModel(url, api_key, model)`` posts to ``{url}/completions`` or
``{url}/chat/completions`` with ``stream: true`` and writes each text delta as it arrives. The
model defaults to the first one ``{url}/models`` lists. A non-200 answer raises
``RuntimeError`` with the server's error message.
"""

from __future__ import annotations

import json
from typing import Any, TextIO

import httpx


class RemoteModel:
    def __init__(self, url: str, api_key: str | None = None, model: str | None = None,
                 timeout: float = 600.0) -> None:
        self.url = url.rstrip("/")
        self.headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.timeout = timeout
        self.model = model or self._first_model()

    def _first_model(self) -> str:
        try:
            resp = httpx.get(f"{self.url}/models", headers=self.headers, timeout=30)
        except httpx.HTTPError as e:
            raise RuntimeError(f"cannot reach the server at {self.url}: {e}") from e
        _raise_for_error(resp)
        data = resp.json().get("data") or []
        if not data:
            raise RuntimeError(f"the server at {self.url} lists no model")
        return str(data[0]["id"])

    def stream(self, path: str, body: dict[str, Any], out: TextIO) -> tuple[str, str | None]:
        """POST ``body`` (streamed) to ``{url}/{path}``; write the text as it arrives. Returns
        (text, finish_reason)."""
        pieces: list[str] = []
        finish: str | None = None
        payload = {**body, "model": self.model, "stream": True}
        try:
            with httpx.stream("POST", f"{self.url}/{path}", json=payload, headers=self.headers,
                              timeout=self.timeout) as resp:
                if resp.status_code != 200:
                    resp.read()
                    _raise_for_error(resp)
                for line in resp.iter_lines():
                    if not line.startswith("data: ") or line == "data: [DONE]":
                        continue
                    event = json.loads(line[6:])
                    if "error" in event:
                        raise RuntimeError(f"the server stopped the answer: "
                                           f"{event['error'].get('message')}")
                    for choice in event.get("choices", []):
                        text = choice.get("text")
                        if text is None:
                            text = (choice.get("delta") or {}).get("content")
                        if text:
                            out.write(text)
                            out.flush()
                            pieces.append(text)
                        finish = choice.get("finish_reason") or finish
        except httpx.HTTPError as e:
            raise RuntimeError(f"cannot reach the server at {self.url}: {e}") from e
        return "".join(pieces), finish


def _raise_for_error(resp: httpx.Response) -> None:
    if resp.status_code == 200:
        return
    try:
        message = resp.json()["error"]["message"]
    except (ValueError, KeyError, TypeError):
        message = resp.text[:500]
    raise RuntimeError(f"the server answered {resp.status_code}: {message}")
