"""The OpenAI ingress of the served models: Ray Serve LLM's own, with every route behind an API key
when one is set (``ServeSettings.api_key_env``)."""

from __future__ import annotations

import hmac
import os

from fastapi import HTTPException, Request
from ray.llm._internal.serve.core.configs.openai_api_models import ChatCompletionRequest, CompletionRequest
from ray.llm._internal.serve.core.ingress.ingress import OpenAiIngress


class KeyedIngress(OpenAiIngress):
    """Ray Serve LLM's OpenAI ingress, with every route behind an API key when one is set."""

    def __init__(self, *args, api_key_env: str = "", **kwargs):
        super().__init__(*args, **kwargs)
        self._api_key = os.environ.get(api_key_env, "") if api_key_env else ""

    def _check(self, request: Request) -> None:
        if self._api_key and not hmac.compare_digest(request.headers.get("authorization", ""), f"Bearer {self._api_key}"):
            raise HTTPException(status_code=401, detail="missing or wrong API key (Authorization: Bearer <key>)")

    async def models(self, request: Request):
        self._check(request)
        return await super().models()

    async def model_data(self, model: str, request: Request):
        self._check(request)
        return await super().model_data(model)

    async def chat(self, body: ChatCompletionRequest, request: Request):
        self._check(request)
        return await super().chat(body, request)

    async def completions(self, body: CompletionRequest, request: Request):
        self._check(request)
        return await super().completions(body, request)
