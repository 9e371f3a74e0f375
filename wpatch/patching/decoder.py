"""Patching inside Whisper's decoder, and the decoding of a batch's every planned run (`decode_plan`).

Decoder sites (`wpatch.sites`), donor word A into recipient word B:
- `dec_resid` (decoder block l's output), `dec_attn_out`, `dec_cross_out`, `dec_mlp_out` (what its
  self-attention, cross-attention and MLP add to the residual stream), at the token positions that read out the
  word: the last token of the forced transcript start (it predicts the word's first token) and every token of
  the word but its last. The donor run is teacher-forced on the donor word (its first surface form) over the
  donor clip's clean encoder output; the recipient runs (greedy, and teacher-forced on each scored word) get
  the donor's activation of block s mixed into their block t at the same positions, at every step.
- `enc_to_dec`: decoder block l's cross-attention reads the donor clip's clean encoder output on the window's
  frames (lerp with the recipient's by alpha), the other blocks the recipient's. It has no source layer: s == t.

The fast path computes each donor run once per chunk and mixes inside `wpatch.patching.decoding.decoder_states`; the
plain-hook references on openai-whisper's own modules are in tests/reference.py.
"""

from dataclasses import dataclass

import torch
from torch import Tensor
from torch.profiler import record_function
from whisper.model import Whisper
from whisper.tokenizer import Tokenizer

from wpatch.patching.decoding import (
    CrossCache,
    Decoded,
    cross_attention_cache,
    cross_keys_values,
    decoder_states,
    greedy_transcripts,
    language_probs,
    word_logprobs,
)
from wpatch.patching.encoder import EncoderOutputs, Patch, PatchedRun, mix, window_weights
from wpatch.patching.options import ReadoutOptions
from wpatch.sites import ENC_TO_DEC, SITES


@dataclass(frozen=True)
class DecodingRun:
    """One decoding: encoder output `feature_row`, with `patch` (a decoder site; None: none) taking the donor
    clip's clean encoder output `donor_row` and, for the dec_* sites, the donor run's tokens `donor_tokens`."""

    feature_row: int
    patch: Patch | None = None
    donor_row: int = -1
    donor_tokens: tuple[int, ...] = ()


@dataclass
class DecodingPlan:
    """Every decoding a batch needs: each encoder output plainly (decoding f = encoder output f), then each
    distinct decoder patch. `row[run]` is the decoding that gives a planned run its measures, `clean[clip]` the
    clip's clean one."""

    decodings: list[DecodingRun]
    clean: dict[int, int]
    row: dict[PatchedRun, int]


def decoding_plan(outputs: EncoderOutputs, runs: list[PatchedRun]) -> DecodingPlan:
    """The decodings of `runs`: encoder-site runs read their patched encoder output, decoder-site runs the
    recipient's clean one with the patch inside the decoder."""
    decodings = [DecodingRun(f) for f in range(len(outputs.features))]
    clean, row = outputs.clean, {}
    for run in runs:
        if not SITES[run.patch.site].in_decoder:
            row[run] = outputs.patched[run]
        elif run not in row:
            row[run] = len(decodings)
            decodings.append(DecodingRun(clean[run.recipient_clip], run.patch, clean[run.donor_clip], run.donor_tokens))
    return DecodingPlan(decodings, outputs.clean, row)


def _positions(values: Tensor, offset: int, length: int) -> Tensor:
    """values[:, offset : offset + length], zero-padded where it runs past the end."""
    part = values[:, offset : offset + length]
    return torch.nn.functional.pad(part, (0, 0, 0, length - part.shape[1]))


class DecoderEdits:
    """The dec_* patches of a chunk of decodings, as a `decoding.Edit`: per (block, site), each decoding's
    donor activations (N, positions, d) and float32 weights (N, positions, 1) by token position (weight 0:
    unpatched). The mix is computed in float32, so alpha is exact under mixed precision too."""

    def __init__(self):
        self.mixes: dict[tuple[int, str], tuple[Tensor, Tensor]] = {}

    def __call__(self, block: int, site: str, value: Tensor, offset: int) -> Tensor:
        if (block, site) not in self.mixes:
            return value
        donor, weight = (_positions(t, offset, value.shape[2]) for t in self.mixes[block, site])
        return mix(value, donor[:, None], weight[:, None])


class SiteRecorder:
    """A `decoding.Edit` that keeps every block's sites ((block, site) -> (N, T, d), one sequence each)."""

    def __init__(self):
        self.states: dict[tuple[int, str], Tensor] = {}

    def __call__(self, block: int, site: str, value: Tensor, offset: int) -> Tensor:
        self.states[block, site] = value[:, 0]
        return value


@torch.no_grad()
def decoder_edits(model: Whisper, features: Tensor, chunk: list[DecodingRun]) -> DecoderEdits | None:
    """The dec_* patches of `chunk`: one teacher-forced donor run per distinct (donor output, tokens), then each
    decoding's donor activation of block s placed on its positions for block t."""
    patched = [(i, d) for i, d in enumerate(chunk) if d.patch is not None and SITES[d.patch.site].positions == "tokens"]
    if not patched:
        return None
    donors = {key: j for j, key in enumerate(dict.fromkeys((d.donor_row, d.donor_tokens) for _, d in patched))}
    length = max(len(tokens) for _, tokens in donors)
    tokens = torch.zeros(len(donors), 1, length, dtype=torch.long)
    for j, (_, donor_tokens) in enumerate(donors):
        tokens[j, 0, : len(donor_tokens)] = torch.tensor(donor_tokens)  # padding after a run cannot reach it
    recorder = SiteRecorder()
    decoder_states(
        model,
        tokens.to(features.device),
        cross_attention_cache(model, features[[row for row, _ in donors]]),
        edit=recorder,
    )
    edits = DecoderEdits()
    end = max(d.patch.end for _, d in patched)
    for i, d in patched:
        p, donor = d.patch, donors[d.donor_row, d.donor_tokens]
        if (p.target_layer, p.site) not in edits.mixes:
            state = recorder.states[0, p.site]
            edits.mixes[p.target_layer, p.site] = (
                state.new_zeros(len(chunk), end, state.shape[-1]),
                state.new_zeros(len(chunk), end, 1, dtype=torch.float32),
            )
        values, weights = edits.mixes[p.target_layer, p.site]
        values[i, p.start : p.end] = recorder.states[p.source_layer, p.site][donor, p.start : p.end]
        weights[i, p.start : p.end] = p.alpha
    return edits


@torch.no_grad()
def patched_cross_cache(model: Whisper, features: Tensor, chunk: list[DecodingRun]) -> CrossCache:
    """The cross-attention cache of `chunk`'s encoder outputs (computed once per distinct output: decoder-site
    runs share their recipient's), where an enc_to_dec patch's block reads lerp(recipient, donor, alpha) on the
    patch's frames instead."""
    rows = [d.feature_row for d in chunk]
    if rows == list(range(rows[0], rows[0] + len(rows))):
        cache = cross_attention_cache(model, features[rows[0] : rows[0] + len(rows)])
    else:  # block by block, so that at most one block's distinct keys and values are held beside the cache
        distinct = {row: j for j, row in enumerate(sorted(set(rows)))}
        where = torch.tensor([distinct[row] for row in rows], device=features.device)
        cache = [
            tuple(x[where] for x in cross_keys_values(block, features[list(distinct)]))
            for block in model.decoder.blocks
        ]
    for block, (keys, values) in enumerate(cache):
        here = [
            i
            for i, d in enumerate(chunk)
            if d.patch and d.patch.site == ENC_TO_DEC.name and d.patch.target_layer == block
        ]
        if here:
            weight = window_weights([chunk[i].patch for i in here], features.shape[1], features.device)
            recipients = features[[chunk[i].feature_row for i in here]]
            donors = features[[chunk[i].donor_row for i in here]]
            keys[here], values[here] = cross_keys_values(model.decoder.blocks[block], mix(recipients, donors, weight))
    return cache


def decode_plan(
    model: Whisper,
    features: Tensor,
    plan: DecodingPlan,
    asked: list[list[tuple]],
    tokenizer: Tokenizer,
    readout: ReadoutOptions,
    detect: bool,
) -> Decoded:
    """Every decoding of `plan`, `readout.decode_chunk` at a time (one cross-attention cache and one set of decoder
    edits per chunk): language probabilities when `detect`, the greedy transcript (in `readout.language`; None: the
    detected one on a multilingual model; at most `readout.max_tokens` tokens), and the log-probability of each
    word in `asked[i]` (see `wpatch.patching.decoding.word_logprobs`)."""
    transcripts, logps, probs_all = [], [], []
    language, chunk = readout.language, readout.decode_chunk
    for start in range(0, len(plan.decodings), chunk):
        part = plan.decodings[start : start + chunk]
        with record_function("wpatch.decoder.cross_attention"):
            cross = patched_cross_cache(model, features, part)
        with record_function("wpatch.decoder.donor_runs"):
            edit = decoder_edits(model, features, part)
        with record_function("wpatch.decoder.language"):
            probs = language_probs(model, cross, tokenizer, edit) if detect else []
            probs_all += probs
        with record_function("wpatch.decoder.greedy"):
            languages = language or ([max(p, key=p.get) for p in probs] if model.is_multilingual else "en")
            transcripts += greedy_transcripts(model, cross, languages, readout.task, readout.max_tokens, edit)
        with record_function("wpatch.decoder.score"):
            logps += word_logprobs(model, cross, [list(words) for words in asked[start : start + chunk]], edit)
    return Decoded(transcripts, logps, probs_all)
