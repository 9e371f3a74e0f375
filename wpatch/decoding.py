"""Batched decoding of (patched) encoder outputs: greedy transcripts and teacher-forced word log-probabilities."""

import torch
import whisper
from torch import Tensor
from whisper.model import Whisper
from whisper.tokenizer import Tokenizer, get_tokenizer


@torch.no_grad()
def greedy_transcripts(model: Whisper, features: Tensor, language: str | None, task: str = "transcribe", max_tokens: int = 8) -> list[str]:
    """Greedy transcripts of encoder outputs (N, 1500, d), with openai-whisper's `DecodingOptions` semantics.

    `max_tokens` caps each transcript (single words need few); decoding stops once every sequence has ended.
    Special tokens that a patched encoder output can provoke mid-transcript (e.g. `<|el|>`) are not text
    and are left out.
    """
    options = whisper.DecodingOptions(
        task=task, language=language, temperature=0.0, sample_len=max_tokens, without_timestamps=True, fp16=False
    )
    tokenizer = get_tokenizer(model.is_multilingual, num_languages=model.num_languages)
    return [tokenizer.decode([t for t in result.tokens if t < tokenizer.eot]).strip() for result in whisper.decode(model, features.float(), options)]


@torch.no_grad()
def sequence_logprobs(model: Whisper, features: Tensor, sequences: list[list[tuple[list[int], list[int]]]]) -> list[list[float]]:
    """Teacher-forced log P(continuation | prefix, features[f]) for each (prefix, continuation) of each feature f.

    One decoder pass for all sequences. The cross-attention keys and values are computed once per feature:
    cross-attention treats every query position on its own, so all sequences of one feature are laid out
    as a single (S * T)-long query against that feature.
    """
    n_features, n_seq = len(sequences), max(len(s) for s in sequences)
    length = max(len(prefix) + len(rest) for seqs in sequences for prefix, rest in seqs)
    tokens = torch.zeros(n_features, n_seq, length, dtype=torch.long)
    wanted = torch.zeros(n_features, n_seq, length, dtype=torch.bool)  # positions whose next token is scored
    for f, seqs in enumerate(sequences):
        for j, (prefix, rest) in enumerate(seqs):
            full = list(prefix) + list(rest)
            tokens[f, j, : len(full)] = torch.tensor(full)
            wanted[f, j, len(prefix) - 1 : len(full) - 1] = True
    tokens, wanted = tokens.to(features.device), wanted.to(features.device)

    decoder = model.decoder
    x = decoder.token_embedding(tokens.view(-1, length)) + decoder.positional_embedding[:length]
    x = x.to(features.dtype)
    for block in decoder.blocks:
        x = x + block.attn(block.attn_ln(x), mask=decoder.mask)[0]
        queries = block.cross_attn_ln(x).reshape(n_features, n_seq * length, -1)
        x = x + block.cross_attn(queries, features)[0].reshape(x.shape)
        x = x + block.mlp(block.mlp_ln(x))
    hidden = decoder.ln(x).view(n_features, n_seq, length, -1)[wanted]
    logits = (hidden @ decoder.token_embedding.weight.to(hidden.dtype).T).float()
    next_tokens = torch.roll(tokens, -1, dims=-1)[wanted]
    token_logp = logits.log_softmax(-1).gather(-1, next_tokens[:, None])[:, 0]
    per_sequence = torch.zeros(n_features, n_seq, device=features.device).index_put_(
        tuple(wanted.nonzero()[:, :2].T), token_logp, accumulate=True
    )
    return [per_sequence[f, : len(seqs)].tolist() for f, seqs in enumerate(sequences)]


def word_logprobs(model: Whisper, features: Tensor, words: list[list[tuple]]) -> list[dict]:
    """log P(word | features[f]) for each word asked of each feature f, as {word: logp} per feature.

    A word is (prefix, forms): the forced transcript start and its surface forms' token sequences; its
    probability sums over the forms (the transcript begins with " bat" or " Bat").
    """
    logps = sequence_logprobs(model, features, [[(prefix, form) for prefix, forms in ws for form in forms] for ws in words])
    result = []
    for ws, lp in zip(words, logps):
        offsets = [0]
        for _, forms in ws:
            offsets.append(offsets[-1] + len(forms))
        result.append({word: torch.tensor(lp[a:b]).logsumexp(0).item() for word, a, b in zip(ws, offsets, offsets[1:])})
    return result


@torch.no_grad()
def language_probs(model: Whisper, features: Tensor, tokenizer: Tokenizer) -> list[dict[str, float]]:
    """openai-whisper's language-detection probabilities for each encoder output (multilingual models)."""
    return whisper.detect_language(model, features.float(), tokenizer)[1]


def scoring_prefix(tokenizer: Tokenizer) -> tuple[int, ...]:
    """The forced start of a transcript: start-of-transcript, language, task, no-timestamps."""
    return tuple(tokenizer.sot_sequence_including_notimestamps)
