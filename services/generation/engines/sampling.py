"""Sampling for the transformers engine's batch: one token per row from the last position's logits.

Each row keeps its own options: the JSON grammar's token mask (xgrammar), repetition / presence /
frequency penalties, temperature, top-k / top-p, and a seeded `torch.Generator` of its own, so a
seeded request draws the same tokens whatever else is in the batch. Also the logprobs reported with
sampled tokens and with the prompt's own tokens.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from services.generation.engines.base import SamplingOptions, TokenLogprob

if TYPE_CHECKING:
    from services.generation.engines.scheduler import Seq


try:  # structured output is optional
    import xgrammar as xgr

    HAS_XGRAMMAR = True
except ImportError:  # pragma: no cover - xgrammar is a dependency of the image
    xgr = None  # type: ignore[assignment]
    HAS_XGRAMMAR = False

# Logprobs of tokens ruled out entirely (-inf) are reported as this, like vLLM does.
LOGPROB_FLOOR = -9999.0
# Tokens per row top-k/top-p look at before falling back to sorting the whole vocabulary.
_TOP_CANDIDATES = 256


def is_greedy(options: SamplingOptions) -> bool:
    return options.temperature <= 1e-5


def row_generator(options: SamplingOptions, device: Any) -> Any:
    """The row's own random generator: seeded when the request gives a seed."""
    import torch

    gen = torch.Generator(device=device)
    if options.seed is not None:
        gen.manual_seed(int(options.seed) & 0xFFFF_FFFF_FFFF_FFFF)
    else:
        gen.seed()
    return gen


def sample(
    seqs: Sequence[Seq], logits: Any, bitmask: Any, token_str: Callable[[int], str]
) -> tuple[list[int], list[TokenLogprob | None]]:
    """One token per row of `logits` ([rows, vocab]) and, where the row asks, its logprobs.

    `bitmask` is xgrammar's token bitmask with a row per batch slot (rows with a grammar fill theirs).
    """
    import torch

    logits = logits.float()
    vocab = logits.shape[-1]

    # Structured output: forbid tokens the grammar does not allow.
    constrained = [row for row, s in enumerate(seqs) if s.matcher is not None and not s.finished]
    if constrained:
        for row in constrained:
            seqs[row].matcher.fill_next_token_bitmask(bitmask, row)
        bitmask = bitmask if bitmask.device == logits.device else bitmask.to(logits.device)
        xgr.apply_token_bitmask_inplace(logits, bitmask, indices=constrained)

    # Penalties, row by row (only rows that ask for them).
    for row, seq in enumerate(seqs):
        opts = seq.options
        if opts.repetition_penalty != 1.0:
            seen = seq.prompt_set.union(seq.output)
            ids = torch.tensor(sorted(seen), dtype=torch.long, device=logits.device)
            picked = logits[row, ids]
            penalty = opts.repetition_penalty
            penalized = torch.where(picked > 0, picked / penalty, picked * penalty)
            # A tiny penalty (5e-324) is 0 in float32: x / 0 is +inf (NaN after log_softmax) and
            # -inf * 0 is NaN (argmax picks it, past the grammar's mask). Keep -inf, cap the rest.
            finite = penalized.clamp(max=torch.finfo(logits.dtype).max)
            logits[row, ids] = torch.where(picked == float("-inf"), picked, finite)
        if (opts.presence_penalty or opts.frequency_penalty) and seq.output:
            out = torch.tensor(seq.output, dtype=torch.long, device=logits.device)
            counts = torch.bincount(out, minlength=vocab)[:vocab].to(logits.dtype)
            logits[row] -= opts.frequency_penalty * counts + opts.presence_penalty * (counts > 0).to(logits.dtype)

    # Temperature, then top-k / top-p on the rows that sample.
    temps = [1.0 if s.greedy else float(s.options.temperature) for s in seqs]
    if any(t != 1.0 for t in temps):
        logits /= torch.tensor(temps, dtype=logits.dtype, device=logits.device)[:, None]
    filtering = [not s.greedy and ((0 < s.options.top_k < vocab) or s.options.top_p < 1.0) for s in seqs]
    if any(filtering):
        rows = [row for row, f in enumerate(filtering) if f]
        index = torch.tensor(rows, device=logits.device)
        logits[index] = top_k_top_p(
            logits.index_select(0, index),
            [seqs[r].options.top_k if 0 < seqs[r].options.top_k < vocab else 0 for r in rows],
            [float(seqs[r].options.top_p) for r in rows],
        )

    logprobs = torch.log_softmax(logits, dim=-1)
    tokens = logits.argmax(dim=-1).tolist()
    sampling = [row for row, seq in enumerate(seqs) if not seq.greedy]
    if sampling:
        # Inverse-CDF sampling with one uniform draw per row from that row's own generator:
        # cheap, and a seeded row draws the same numbers whatever else is in the batch.
        index = torch.tensor(sampling, device=logits.device)
        probs = logprobs.index_select(0, index).exp()
        cdf = probs.cumsum(dim=-1)
        draws = torch.cat(
            [torch.rand(1, generator=seqs[r].generator, device=logits.device, dtype=cdf.dtype) for r in sampling]
        )
        picks = torch.searchsorted(cdf, (draws * cdf[:, -1]).unsqueeze(-1), right=True).squeeze(-1)
        picks = picks.clamp_(max=vocab - 1)
        impossible = probs.gather(1, picks.unsqueeze(-1)).squeeze(-1) <= 0  # rounding at the very top
        picks = torch.where(impossible, probs.argmax(dim=-1), picks)
        for row, pick in zip(sampling, picks.tolist(), strict=True):
            tokens[row] = int(pick)

    results: list[TokenLogprob | None] = []
    for row, seq in enumerate(seqs):
        n = seq.options.logprobs
        if n is None:
            results.append(None)
            continue
        token = tokens[row]
        chosen = max(float(logprobs[row, token]), LOGPROB_FLOOR)
        top: list[tuple[int, str, float]] = []
        if n > 0:
            values, ids = logprobs[row].topk(min(int(n), vocab))
            top = [
                (int(i), token_str(int(i)), max(float(v), LOGPROB_FLOOR))
                for v, i in zip(values.tolist(), ids.tolist(), strict=True)
            ]
        results.append(TokenLogprob(token_id=token, token=token_str(token), logprob=chosen, top=top))
    return tokens, results


def prompt_logprobs(
    logits: Any, prompt: Sequence[int], top_n: int, token_str: Callable[[int], str]
) -> list[TokenLogprob | None]:
    """Each prompt token's logprob given the tokens before it, from the prefill's logits ([len(prompt), vocab]).

    Position i of the logits predicts token i + 1, so the first token has none (None), as in vLLM;
    `rank` is 1 + the number of tokens the model found likelier, and `top_n` alternatives come with each.
    """
    import torch

    result: list[TokenLogprob | None] = [None]
    if len(prompt) < 2:
        return result
    logprobs = torch.log_softmax(logits[:-1].float(), dim=-1)
    target = torch.tensor(prompt[1:], dtype=torch.long, device=logprobs.device)
    chosen = logprobs.gather(1, target[:, None])
    ranks = ((logprobs > chosen).sum(dim=-1) + 1).tolist()
    chosen_list = chosen.squeeze(1).tolist()
    top: list[list[tuple[int, str, float]]] = [[] for _ in target]
    if top_n > 0:
        values, ids = logprobs.topk(min(top_n, logprobs.shape[-1]), dim=-1)
        top = [
            [(i, token_str(i), max(v, LOGPROB_FLOOR)) for v, i in zip(vs, is_, strict=True)]
            for vs, is_ in zip(values.tolist(), ids.tolist(), strict=True)
        ]
    for pos, token in enumerate(prompt[1:]):
        result.append(
            TokenLogprob(
                token_id=int(token),
                token=token_str(int(token)),
                logprob=max(chosen_list[pos], LOGPROB_FLOOR),
                top=top[pos],
                rank=int(ranks[pos]),
            )  # fmt: skip
        )
    return result


def top_k_top_p(logits: Any, top_ks: list[int], top_ps: list[float]) -> Any:
    """Mask (to -inf) what top-k, then top-p (on the renormalised top-k distribution), rule out.

    `logits` is [rows, vocab]; a top_k of 0 and a top_p of 1 mean off. Works on the best
    `_TOP_CANDIDATES` (or top_k) tokens per row and only sorts the whole vocabulary when the
    nucleus of some row is wider than that.
    """
    import torch

    rows, vocab = logits.shape
    dev = logits.device
    width = min(vocab, max([_TOP_CANDIDATES, *top_ks]))
    k = torch.tensor([kk if kk > 0 else vocab for kk in top_ks], device=dev)
    p = torch.tensor(top_ps, dtype=logits.dtype, device=dev)
    full_lse = torch.logsumexp(logits, dim=-1, keepdim=True)

    def nucleus(values: Any) -> tuple[Any, Any]:
        ranks = torch.arange(values.shape[-1], device=dev)[None, :]
        outside_k = ranks >= k[:, None]
        kept = values.masked_fill(outside_k, float("-inf"))
        # Renormalise over the top-k where a top-k applies, over the whole vocabulary otherwise.
        lse = torch.where(k[:, None] < vocab, torch.logsumexp(kept, dim=-1, keepdim=True), full_lse)
        probs = (kept - lse).exp()
        return outside_k, probs

    values, order = logits.topk(width, dim=-1)
    outside_k, probs = nucleus(values)
    if width < vocab:
        covered = probs.sum(dim=-1)
        if bool(((k >= vocab) & (p < 1.0) & (covered < p)).any()):  # a nucleus wider than the candidates
            values, order = logits.sort(dim=-1, descending=True)
            outside_k, probs = nucleus(values)
    ahead = probs.cumsum(dim=-1) - probs  # probability mass ranked before each token
    remove = outside_k | ((ahead > p[:, None]) & (p[:, None] < 1.0))
    remove[:, 0] = False
    values = values.masked_fill(remove, float("-inf"))
    return torch.full_like(logits, float("-inf")).scatter_(-1, order, values)
