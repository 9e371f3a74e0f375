"""Batched decoding of (patched) encoder outputs: language probabilities, greedy transcripts and teacher-forced
word log-probabilities, all reading one cross-attention cache.

openai-whisper computes each decoder block's cross-attention keys and values from the encoder output in every
call (`detect_language`, `decode`, `logits`); over 1500 frames they are most of a short decode's cost. Here they
are computed once per encoder output (`cross_attention_cache`) and every decoding below reads them. The
operations are openai-whisper's own (its attention, its logit filters, its kv-cache order), so greedy
transcripts and language probabilities equal `whisper.decode` and `whisper.detect_language` in fp32.
"""

from dataclasses import dataclass

import torch
import torch.nn.functional as F
import whisper
from torch import Tensor
from torch.profiler import record_function
from whisper.decoding import DecodingTask
from whisper.model import Whisper
from whisper.tokenizer import Tokenizer

CrossCache = list[
    tuple[Tensor, Tensor]
]  # per decoder block: cross-attention keys and values (N, heads, 1500, d / heads)
SelfCache = list[tuple[Tensor, Tensor]]  # per decoder block: self-attention keys and values of the tokens so far


def split_heads(x: Tensor, n_head: int) -> Tensor:
    """(N, T, d) -> (N, heads, T, d / heads), the layout of openai-whisper's `qkv_attention`."""
    return x.view(*x.shape[:2], n_head, -1).transpose(1, 2)


@torch.no_grad()
def cross_attention_cache(model: Whisper, features: Tensor) -> CrossCache:
    """Each decoder block's cross-attention keys and values of encoder outputs (N, 1500, d), computed once and
    stored split into heads, contiguous (every decoding step reads them; a strided read costs a third more)."""
    heads = model.dims.n_text_head
    return [
        (
            split_heads(block.cross_attn.key(features), heads).contiguous(),
            split_heads(block.cross_attn.value(features), heads).contiguous(),
        )
        for block in model.decoder.blocks
    ]


@torch.no_grad()
def decoder_states(
    model: Whisper, tokens: Tensor, cross: CrossCache, past: SelfCache | None = None
) -> tuple[Tensor, SelfCache]:
    """Final decoder states (N, S, T, d) of S token sequences (N, S, T) per encoder output, continuing `past`;
    returns them and the self-attention cache extended by these tokens.

    openai-whisper's `TextDecoder.forward` with its kv cache (and its scaled-dot-product attention), except that
    cross-attention reads `cross`: it treats every query position on its own, so the S sequences of one encoder
    output are one (S * T)-long query.
    """
    decoder = model.decoder
    n, s, t = tokens.shape
    offset = past[0][0].shape[1] if past else 0
    x = decoder.token_embedding(tokens.reshape(n * s, t)) + decoder.positional_embedding[offset : offset + t]
    x = x.to(cross[0][0].dtype)
    present = []
    for i, (block, (cross_keys, cross_values)) in enumerate(zip(decoder.blocks, cross)):
        attn, h = block.attn, block.attn_ln(x)
        keys, values = attn.key(h), attn.value(h)
        if past:
            keys, values = torch.cat([past[i][0], keys], dim=1), torch.cat([past[i][1], values], dim=1)
        present.append((keys, values))
        x = x + attn.out(attn.qkv_attention(attn.query(h), keys, values, decoder.mask)[0])
        queries = split_heads(
            block.cross_attn.query(block.cross_attn_ln(x)).reshape(n, s * t, -1), block.cross_attn.n_head
        )
        attended = F.scaled_dot_product_attention(queries, cross_keys, cross_values).transpose(1, 2).reshape(x.shape)
        x = x + block.cross_attn.out(attended)
        x = x + block.mlp(block.mlp_ln(x))
    return decoder.ln(x).reshape(n, s, t, -1), present


def vocabulary_logits(model: Whisper, states: Tensor) -> Tensor:
    """Next-token logits (float32) of decoder states, through the tied token embedding as in openai-whisper."""
    return (states @ model.decoder.token_embedding.weight.to(states.dtype).T).float()


@torch.no_grad()
def language_probs(model: Whisper, cross: CrossCache, tokenizer: Tokenizer) -> list[dict[str, float]]:
    """openai-whisper's language-detection probabilities of each encoder output (multilingual models)."""
    tokens = torch.full((cross[0][0].shape[0], 1, 1), tokenizer.sot, device=cross[0][0].device)
    logits = vocabulary_logits(model, decoder_states(model, tokens, cross)[0][:, 0, 0])
    languages = torch.tensor(tokenizer.all_language_tokens, device=logits.device)
    probs = logits[:, languages].softmax(-1).tolist()
    return [dict(zip(tokenizer.all_language_codes, p)) for p in probs]


@torch.no_grad()
def greedy_transcripts(
    model: Whisper, cross: CrossCache, language: str | list[str], task: str = "transcribe", max_tokens: int = 8
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
        states, past = decoder_states(model, (tokens if past is None else tokens[:, -1:])[:, None], cross, past)
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
    model: Whisper, cross: CrossCache, sequences: list[list[tuple[list[int], list[int]]]]
) -> list[list[float]]:
    """Teacher-forced log P(continuation | prefix, encoder output f) for each (prefix, continuation) asked of
    each encoder output f, all in one decoder pass."""
    device = cross[0][0].device
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
    states = decoder_states(model, tokens, cross)[0][wanted]
    next_tokens = torch.roll(tokens, -1, dims=-1)[wanted]
    token_logp = vocabulary_logits(model, states).log_softmax(-1).gather(-1, next_tokens[:, None])[:, 0]
    per_sequence = torch.zeros(n_features, n_seq, device=device).index_put_(
        tuple(wanted.nonzero()[:, :2].T), token_logp, accumulate=True
    )
    return [per_sequence[f, : len(seqs)].tolist() for f, seqs in enumerate(sequences)]


def word_logprobs(model: Whisper, cross: CrossCache, words: list[list[tuple]]) -> list[dict]:
    """log P(word | encoder output f) for each word asked of each encoder output f, as {word: logp} per output.

    A word is (prefix, forms): the forced transcript start and its surface forms' token sequences; its
    probability sums over the forms (the transcript begins with " bat" or " Bat").
    """
    logps = sequence_logprobs(
        model, cross, [[(prefix, form) for prefix, forms in ws for form in forms] for ws in words]
    )
    result = []
    for ws, lp in zip(words, logps):
        offsets = [0]
        for _, forms in ws:
            offsets.append(offsets[-1] + len(forms))
        result.append({word: torch.tensor(lp[a:b]).logsumexp(0).item() for word, a, b in zip(ws, offsets, offsets[1:])})
    return result


@dataclass
class Decoded:
    """What the decoder read off each encoder output f: its greedy transcript, the log-probability of each word
    asked of it ({word: logp}), and its language probabilities (an empty list when languages were not detected)."""

    transcripts: list[str]
    logps: list[dict]
    language_probs: list[dict[str, float]]


def decode_outputs(
    model: Whisper,
    features: Tensor,
    asked: list[list[tuple]],
    tokenizer: Tokenizer,
    language: str | None,
    task: str,
    max_tokens: int,
    chunk: int,
    detect: bool,
) -> Decoded:
    """Decode every encoder output once, `chunk` at a time (one cross-attention cache per chunk): language
    probabilities when `detect`, the greedy transcript (in `language`; None: the detected one on a multilingual
    model), and the log-probability of each word in `asked[f]` (see `word_logprobs`)."""
    transcripts, logps, probs_all = [], [], []
    for part in (slice(i, i + chunk) for i in range(0, len(features), chunk)):
        with record_function("wpatch.decoder.cross_attention"):
            cross = cross_attention_cache(model, features[part])
        with record_function("wpatch.decoder.language"):
            probs = language_probs(model, cross, tokenizer) if detect else []
            probs_all += probs
        with record_function("wpatch.decoder.greedy"):
            languages = language or ([max(p, key=p.get) for p in probs] if model.is_multilingual else "en")
            transcripts += greedy_transcripts(model, cross, languages, task, max_tokens)
        with record_function("wpatch.decoder.score"):
            logps += word_logprobs(model, cross, [list(words) for words in asked[part]])
    return Decoded(transcripts, logps, probs_all)
