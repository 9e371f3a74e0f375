"""Batched decoding of (patched) encoder outputs: language probabilities, greedy transcripts and teacher-forced
word log-probabilities, all reading one cross-attention cache.

openai-whisper computes each decoder block's cross-attention keys and values from the encoder output in every
call (`detect_language`, `decode`, `logits`); over 1500 frames they are most of a short decode's cost. Here they
are computed once per encoder output (`cross_attention_cache`) and every decoding below reads them. The
operations are openai-whisper's own (its attention, its logit filters, its kv-cache order), so greedy
transcripts and language probabilities equal `whisper.decode` and `whisper.detect_language` in fp32.
"""

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
import whisper
from torch import Tensor
from whisper.decoding import DecodingTask
from whisper.model import Whisper
from whisper.tokenizer import Tokenizer

from wpatch.sites import DEC_ATTN_OUT, DEC_CROSS_OUT, DEC_MLP_OUT, DEC_RESID

CrossCache = list[
    tuple[Tensor, Tensor]
]  # per decoder block: cross-attention keys and values (N, heads, 1500, d / heads)
SelfCache = list[tuple[Tensor, Tensor]]  # per decoder block: self-attention keys and values of the tokens so far
# An edit inside the decoder (`wpatch.patching.decoder`): (block, site, activation (N, S, T, d), position of its
# first token) -> the activation to use, at each token-position site of `wpatch.sites` (decoder_states says where).
Edit = Callable[[int, str, Tensor, int], Tensor]


def split_heads(x: Tensor, n_head: int) -> Tensor:
    """(N, T, d) -> (N, heads, T, d / heads), the layout of openai-whisper's `qkv_attention`."""
    return x.view(*x.shape[:2], n_head, -1).transpose(1, 2)


@torch.no_grad()
def cross_keys_values(block, features: Tensor) -> tuple[Tensor, Tensor]:
    """One decoder block's cross-attention keys and values of encoder outputs (N, 1500, d), split into heads and
    contiguous (every decoding step reads them; a strided read costs a third more)."""
    attention = block.cross_attn
    return (
        split_heads(attention.key(features), attention.n_head).contiguous(),
        split_heads(attention.value(features), attention.n_head).contiguous(),
    )


def cross_attention_cache(model: Whisper, features: Tensor) -> CrossCache:
    """Each decoder block's cross-attention keys and values of encoder outputs (N, 1500, d), computed once."""
    return [cross_keys_values(block, features) for block in model.decoder.blocks]


@torch.no_grad()
def decoder_states(
    model: Whisper, tokens: Tensor, cross: CrossCache, past: SelfCache | None = None, edit: Edit | None = None
) -> tuple[Tensor, SelfCache]:
    """Final decoder states (N, S, T, d) of S token sequences (N, S, T) per encoder output, continuing `past`;
    returns them and the self-attention cache extended by these tokens. `edit` (if given) sees, and may replace,
    every block's sites (see `Edit`).

    openai-whisper's `TextDecoder.forward` with its kv cache (and its scaled-dot-product attention), except that
    cross-attention reads `cross`: it treats every query position on its own, so the S sequences of one encoder
    output are one (S * T)-long query.
    """
    decoder = model.decoder
    n, s, t = tokens.shape
    offset = past[0][0].shape[1] if past else 0

    def site(block: int, name: str, value: Tensor) -> Tensor:
        return value if edit is None else edit(block, name, value.view(n, s, t, -1), offset).reshape(value.shape)

    x = decoder.token_embedding(tokens.reshape(n * s, t)) + decoder.positional_embedding[offset : offset + t]
    x = x.to(cross[0][0].dtype)
    present = []
    for i, (block, (cross_keys, cross_values)) in enumerate(zip(decoder.blocks, cross)):
        attn, h = block.attn, block.attn_ln(x)
        keys, values = attn.key(h), attn.value(h)
        if past:
            keys, values = torch.cat([past[i][0], keys], dim=1), torch.cat([past[i][1], values], dim=1)
        present.append((keys, values))
        x = x + site(i, DEC_ATTN_OUT.name, attn.out(attn.qkv_attention(attn.query(h), keys, values, decoder.mask)[0]))
        queries = split_heads(
            block.cross_attn.query(block.cross_attn_ln(x)).reshape(n, s * t, -1), block.cross_attn.n_head
        )
        attended = F.scaled_dot_product_attention(queries, cross_keys, cross_values).transpose(1, 2).reshape(x.shape)
        x = x + site(i, DEC_CROSS_OUT.name, block.cross_attn.out(attended))
        x = x + site(i, DEC_MLP_OUT.name, block.mlp(block.mlp_ln(x)))
        x = site(i, DEC_RESID.name, x)
    return decoder.ln(x).reshape(n, s, t, -1), present


def vocabulary_logits(model: Whisper, states: Tensor) -> Tensor:
    """Next-token logits (float32) of decoder states, through the tied token embedding as in openai-whisper."""
    return (states @ model.decoder.token_embedding.weight.to(states.dtype).T).float()


@torch.no_grad()
def language_probs(
    model: Whisper, cross: CrossCache, tokenizer: Tokenizer, edit: Edit | None = None
) -> list[dict[str, float]]:
    """openai-whisper's language-detection probabilities of each encoder output (multilingual models)."""
    tokens = torch.full((cross[0][0].shape[0], 1, 1), tokenizer.sot, device=cross[0][0].device)
    logits = vocabulary_logits(model, decoder_states(model, tokens, cross, edit=edit)[0][:, 0, 0])
    languages = torch.tensor(tokenizer.all_language_tokens, device=logits.device)
    probs = logits[:, languages].softmax(-1).tolist()
    return [dict(zip(tokenizer.all_language_codes, p)) for p in probs]


@torch.no_grad()
def greedy_transcripts(
    model: Whisper,
    cross: CrossCache,
    language: str | list[str],
    task: str = "transcribe",
    max_tokens: int = 8,
    edit: Edit | None = None,
) -> list[str]:
    """Greedy transcripts of encoder outputs, with openai-whisper's `DecodingOptions` semantics (temperature 0,
    no timestamps, blank and non-speech tokens suppressed); `language` is one code or one per encoder output
    (e.g. the detected ones).

    `max_tokens` caps each transcript (single words need few); decoding stops once every sequence has ended.
    Special tokens that a patched encoder output can provoke mid-transcript (e.g. `<|el|>`) are not text
    and are left out.
    """
    languages = [language] * cross[0][0].shape[0] if isinstance(language, str) else language
    task_of = DecodingTask(
        model,
        whisper.DecodingOptions(
            task=task, language=languages[0], sample_len=max_tokens, without_timestamps=True, fp16=False
        ),
    )
    tokenizer = task_of.tokenizer
    tokens = torch.tensor([task_of.initial_tokens], device=cross[0][0].device).repeat(len(languages), 1)
    if model.is_multilingual:
        tokens[:, task_of.sot_index + 1] = torch.tensor(
            [tokenizer.to_language_token(code) for code in languages], device=tokens.device
        )
    past = None
    for _ in range(max_tokens):
        states, past = decoder_states(model, (tokens if past is None else tokens[:, -1:])[:, None], cross, past, edit)
        logits = vocabulary_logits(model, states[:, 0, -1])
        for logit_filter in task_of.logit_filters:
            logit_filter.apply(logits, tokens)
        next_tokens = logits.argmax(dim=-1)
        next_tokens[tokens[:, -1] == tokenizer.eot] = tokenizer.eot
        tokens = torch.cat([tokens, next_tokens[:, None]], dim=-1)
        if (next_tokens == tokenizer.eot).all():
            break
    texts = []
    for sequence in tokens[:, task_of.sample_begin :].tolist():
        sequence = sequence[: sequence.index(tokenizer.eot)] if tokenizer.eot in sequence else sequence
        texts.append(tokenizer.decode([t for t in sequence if t < tokenizer.eot]).strip())
    return texts


@torch.no_grad()
def sequence_logprobs(
    model: Whisper, cross: CrossCache, sequences: list[list[tuple[list[int], list[int]]]], edit: Edit | None = None
) -> list[list[float]]:
    """Teacher-forced log P(continuation | prefix, encoder output f) for each (prefix, continuation) asked of
    each encoder output f, all in one decoder pass."""
    device = cross[0][0].device
    if not any(sequences):  # e.g. a chunk of clean outputs that only serve as control donors
        return [[] for _ in sequences]
    n_features, n_seq = len(sequences), max(len(s) for s in sequences)
    length = max(len(prefix) + len(rest) for seqs in sequences for prefix, rest in seqs)
    tokens = torch.zeros(n_features, n_seq, length, dtype=torch.long)
    wanted = torch.zeros(n_features, n_seq, length, dtype=torch.bool)  # positions whose next token is scored
    for f, seqs in enumerate(sequences):
        for j, (prefix, rest) in enumerate(seqs):
            full = list(prefix) + list(rest)
            tokens[f, j, : len(full)] = torch.tensor(full)
            wanted[f, j, len(prefix) - 1 : len(full) - 1] = True
    tokens, wanted = tokens.to(device), wanted.to(device)
    states = decoder_states(model, tokens, cross, edit=edit)[0][wanted]
    next_tokens = torch.roll(tokens, -1, dims=-1)[wanted]
    token_logp = vocabulary_logits(model, states).log_softmax(-1).gather(-1, next_tokens[:, None])[:, 0]
    per_sequence = torch.zeros(n_features, n_seq, device=device).index_put_(
        tuple(wanted.nonzero()[:, :2].T), token_logp, accumulate=True
    )
    return [per_sequence[f, : len(seqs)].tolist() for f, seqs in enumerate(sequences)]


def word_logprobs(model: Whisper, cross: CrossCache, words: list[list[tuple]], edit: Edit | None = None) -> list[dict]:
    """log P(word | encoder output f) for each word asked of each encoder output f, as {word: logp} per output.

    A word is a `wpatch.text.ScoredWord`: the forced transcript start and its surface forms' token sequences; its
    probability sums over the forms (the transcript begins with " bat" or " Bat"), or with `best` is the largest of
    its written forms' sums (`word_logprob`).
    """
    logps = sequence_logprobs(
        model, cross, [[(word.prefix, form) for word in ws for form in word.forms] for ws in words], edit
    )
    result = []
    for ws, lp in zip(words, logps):
        offsets = [0]
        for word in ws:
            offsets.append(offsets[-1] + len(word.forms))
        result.append(
            {word: word_logprob(torch.tensor(lp[a:b]), word).item() for word, a, b in zip(ws, offsets, offsets[1:])}
        )
    return result


def word_logprob(form_logps: Tensor, word) -> Tensor:
    """A word's log-probability from its surface forms' (in `word.forms`' order): their log-sum-exp or, with
    `word.best`, the largest of its written forms' log-sum-exps."""
    if not word.best:
        return form_logps.logsumexp(0)
    return torch.stack([group.logsumexp(0) for group in form_logps.split(list(word.best))]).max()


@dataclass
class Decoded:
    """What the decoder read off each encoder output f: its greedy transcript, the log-probability of each word
    asked of it ({word: logp}), and its language probabilities (an empty list when languages were not detected)."""

    transcripts: list[str]
    logps: list[dict]
    language_probs: list[dict[str, float]]
