"""`/v1/perplexity`: how plausible a model finds each text, from the logprobs of its own tokens.

Each text is scored in one prefill (the engines' `prompt_logprobs`, the very figures chat and
completions return with `prompt_logprobs`), all texts handed to the engine at once so it batches
them. The first token has no logprob (nothing comes before it) and is left out of the mean:
`nll` = -mean(logprob of tokens 2..n), `perplexity` = exp(nll).
"""

from __future__ import annotations

import asyncio
import math

from inferag_protocol.perplexity import PerplexityData, PerplexityRequest, PerplexityResponse, PerplexityUsage
from services.common.errors import InvalidRequest

from .engines.base import TokenLogprob
from .serving import GenerationService

# exp() of more overflows a float (JSON has no infinity): a perplexity this high is reported as exp(700).
_MAX_NLL = 700.0


def summarize(index: int, first_token: str, scored: list[TokenLogprob | None], with_top: bool) -> PerplexityData:
    """One text's figures from its prompt logprobs (None first)."""
    rest = [item for item in scored[1:] if item is not None]
    total = sum(item.logprob for item in rest)
    nll = -total / len(rest)
    top: list[dict[str, float] | None] | None = None
    if with_top:
        top = [None, *({tok: lp for _, tok, lp in item.top} for item in rest)]
    return PerplexityData(
        index=index,
        tokens=[first_token, *(item.token for item in rest)],
        token_logprobs=[None, *(item.logprob for item in rest)],
        top_logprobs=top,
        logprob=total,
        nll=nll,
        perplexity=math.exp(min(nll, _MAX_NLL)),
    )


async def perplexity(service: GenerationService, req: PerplexityRequest) -> PerplexityResponse:
    service.resolve_model(req.model)
    texts = req.texts()

    def encode() -> list[list[int]]:
        return [list(service.tokenizer.encode(t, add_special_tokens=req.add_special_tokens)) for t in texts]

    prompts = await asyncio.to_thread(encode)
    for i, ids in enumerate(prompts):
        if len(ids) < 2:
            raise InvalidRequest(
                f"Input {i} is {len(ids)} token(s); a perplexity needs at least 2 (the first is not scored).",
                param="input",
            )
    scored = await service.score(prompts, req.top_logprobs or 0, "perplexity")
    data = [
        summarize(
            i, str(service.tokenizer.decode([ids[0]], skip_special_tokens=False)), items, req.top_logprobs is not None
        )
        for i, (ids, items) in enumerate(zip(prompts, scored, strict=True))
    ]
    tokens = sum(len(p) for p in prompts)
    return PerplexityResponse(
        model=req.model, data=data, usage=PerplexityUsage(prompt_tokens=tokens, total_tokens=tokens)
    )
