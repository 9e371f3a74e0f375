"""Patched runs and readout of a CTC encoder (`wpatch.models.wav2vec2.CTCModel`), the way Whisper's encoder is
patched (`wpatch.patching.encoder`) and read out (`wpatch.patching.decoding`).

Readout (`decode`): the greedy CTC transcript (best label per frame, repeats merged, blanks dropped); a word's
log-probability is the CTC log-likelihood of its text (the carrier sentence with the word in it, or the word
alone; letters, word delimiters between words) over the run's frames, `torch.nn.functional.ctc_loss`, summed
over the word's surface forms.
"""

from dataclasses import dataclass

import torch
from torch import Tensor

from wpatch.errors import WpatchError
from wpatch.models.wav2vec2 import N_CTX, CTCModel
from wpatch.patching.decoder import DecodingPlan
from wpatch.patching.decoding import Decoded
from wpatch.patching.encoder import EncoderOutputs, PatchedRun, mix, window_weights
from wpatch.sites import BLOCK_OUT, CNN_OUT, RESID_PRE, SITES, Hook
from wpatch.text import ScoredWord


@dataclass
class CTCOutputs(EncoderOutputs):
    """`EncoderOutputs` whose `features` are label log-probabilities (N, frames, labels), with the frames each
    row is read out on (`lengths`)."""

    lengths: Tensor


def check_settings(sites: list[str], method: str) -> None:
    """Refuse, in one line, a setting the family lacks: a site outside its encoder layers, attribution patching."""
    for name in sites:
        if name in SITES and SITES[name].in_decoder:
            encoder = ", ".join(n for n, site in SITES.items() if not site.in_decoder)
            raise WpatchError(
                f"site {name} is in Whisper's decoder; a CTC model of the wav2vec2 family has none: use {encoder}"
            )
    if method != "patch":
        raise WpatchError(f"method {method} reads Whisper's decoder; use --model.method patch with a CTC model")


def clean_run(
    model: CTCModel, values: Tensor, lengths: Tensor, sites: set[str]
) -> tuple[dict[str, list[Tensor]], Tensor]:
    """Every layer's activation at each of `sites` and the label log-probabilities, from one forward pass."""
    states = {site: [] for site in sites}
    handles = []
    for site in sites:
        for layer in range(1 if SITES[site].before_blocks else model.dims.n_audio_layer):
            store, module = states[site], model.site_module(layer, site)
            if SITES[site].hook is Hook.FEATURES:  # (N, channels, frames): stored (N, frames, channels)
                hook = module.register_forward_hook(lambda _m, _i, out, store=store: store.append(out.transpose(1, 2)))
            elif SITES[site].hook is Hook.INPUT:
                hook = module.register_forward_pre_hook(lambda _m, args, store=store: store.append(args[0]))
            else:
                hook = module.register_forward_hook(
                    lambda _m, _i, out, store=store: store.append(out[0] if isinstance(out, tuple) else out)
                )
            handles.append(hook)
    try:
        hidden = model.base(values, attention_mask=sample_masks(model, values, lengths)).last_hidden_state
    finally:
        for handle in handles:
            handle.remove()
    return states, model.log_probs(hidden)


def sample_masks(model: CTCModel, values: Tensor, lengths: Tensor) -> Tensor | None:
    """(N, samples) masks of clips of `lengths` samples, as the feature extractor gives them, or None for a model
    that reads no mask."""
    if not model.dims.uses_mask:
        return None
    return torch.arange(values.shape[1], device=values.device)[None] < lengths[:, None]


def features_run(model: CTCModel, values: Tensor, lengths: Tensor, donor: Tensor, weight: Tensor) -> Tensor:
    """The label log-probabilities when the feature encoder's output (`cnn_out`) is lerp(it, donor, weight) on
    the recipients' input `values` (of `lengths` samples): the feature encoder runs again, then the feature
    projection, the positional convolution and every layer."""

    def patch(_m, _i, out):
        return mix(out.transpose(1, 2), donor, weight).transpose(1, 2)

    handle = model.site_module(0, CNN_OUT.name).register_forward_hook(patch)
    try:
        hidden = model.base(values, attention_mask=sample_masks(model, values, lengths)).last_hidden_state
    finally:
        handle.remove()
    return model.log_probs(hidden)


def patched_run(
    model: CTCModel, block_input: Tensor, layer: int, site: str, donor: Tensor, weight: Tensor, masks
) -> Tensor:
    """The label log-probabilities when `site` of `layer` is lerp(site, donor, weight), from the recipients'
    cached input to that layer."""
    module = model.site_module(layer, site)
    if SITES[site].hook is Hook.INPUT:
        handle = module.register_forward_pre_hook(lambda _m, args: (mix(args[0], donor, weight), *args[1:]))
    else:
        handle = module.register_forward_hook(lambda _m, _i, out: mix(out, donor, weight))
    try:
        return model.layers_from(block_input, layer, masks)
    finally:
        handle.remove()


@torch.no_grad()
def encode_plan(
    model: CTCModel, inputs: dict[int, tuple[Tensor, int]], runs: list[PatchedRun], clean_clips
) -> CTCOutputs:
    """Every clip's clean label log-probabilities and every patched run's, each distinct state once: one clean
    pass over all clips; the whole-block patch (block_out, every frame, alpha 1) runs the layers after t on the
    donor's state once per donor, layer pair and mask; any other patch runs layer t and the ones after it
    from the recipient's cached input, and `cnn_out` the whole model from the recipient's input values. `inputs`: clip
    -> (its padded input values, its length in samples)."""
    clips = sorted(set(clean_clips) | {r.donor_clip for r in runs} | {r.recipient_clip for r in runs})
    position = {clip: i for i, clip in enumerate(clips)}
    values = torch.stack([inputs[clip][0] for clip in clips])
    samples = torch.tensor([inputs[clip][1] for clip in clips], device=values.device)
    general = [run for run in runs if not run.patch.replaces_whole_block(N_CTX)]
    sites = {BLOCK_OUT.name} | {run.patch.site for run in general} | ({RESID_PRE.name} if general else set())
    states, clean = clean_run(model, values, samples, sites)
    n_frames = clean.shape[1]
    masks = model.masks(samples, n_frames)
    features, lengths = [clean], [model.readout_frames(samples, n_frames)]
    row_of = {}
    todo: dict[tuple[str, int, int], dict] = {}  # (site, target layer, donor layer) -> distinct runs
    for run in runs:
        p = run.patch
        if p.replaces_whole_block(N_CTX) and p.source_layer == p.target_layer and not model.dims.uses_mask:
            row_of[run] = position[run.donor_clip]  # the donor's clean run
        else:
            todo.setdefault((p.site, p.target_layer, p.source_layer), {})[run] = None
    for (site, t, s), distinct in todo.items():
        distinct = list(distinct)
        recipients = [position[run.recipient_clip] for run in distinct]
        donor = torch.stack([states[site][s][position[run.donor_clip]] for run in distinct])
        rows = None if masks is None else masks[recipients]
        if all(run.patch.replaces_whole_block(N_CTX) for run in distinct):  # the same for a donor and mask
            key = [(run.donor_clip, 0 if rows is None else int(samples[r])) for run, r in zip(distinct, recipients)]
            unique = list(dict.fromkeys(key))
            first = [key.index(k) for k in unique]
            out = model.layers_from(donor[first], t + 1, None if rows is None else rows[first])
            out = out[[unique.index(k) for k in key]]
        else:
            weight = window_weights([run.patch for run in distinct], n_frames, values.device)
            if SITES[site].before_blocks:
                out = features_run(model, values[recipients], samples[recipients], donor, weight)
            else:
                out = patched_run(model, states[RESID_PRE.name][t][recipients], t, site, donor, weight, rows)
        offset = sum(len(f) for f in features)
        features.append(out)
        lengths.append(model.readout_frames(samples[recipients], n_frames))
        row_of.update({run: offset + i for i, run in enumerate(distinct)})
    return CTCOutputs(torch.cat(features), position, row_of, torch.cat(lengths))


@torch.no_grad()
def decode(model: CTCModel, outputs: CTCOutputs, decodings: DecodingPlan, asked: list[dict]) -> Decoded:
    """Each decoding's greedy CTC transcript and the CTC log-likelihood of each word asked of it."""
    transcripts, logps = [], []
    features, lengths = outputs.features.float().cpu(), outputs.lengths.tolist()
    for f, words in enumerate(asked):
        row = decodings.decodings[f].feature_row
        log_probs, n = features[row], lengths[row]
        transcripts.append(model.transcript(log_probs[:n].argmax(-1).tolist()))
        logps.append({word: word_log_likelihood(log_probs[:n], word, model.dims.blank) for word in words})
    return Decoded(transcripts, logps, [])


def word_log_likelihood(log_probs: Tensor, word: ScoredWord, blank: int) -> float:
    """log P(one of the word's forms | the frames): the CTC log-likelihood of each form's labels over the frames
    (`log_probs`: (frames, labels)), summed over forms in probability."""
    each = [
        -torch.nn.functional.ctc_loss(
            log_probs.double()[:, None],
            torch.tensor([form]),
            torch.tensor([len(log_probs)]),
            torch.tensor([len(form)]),
            blank=blank,
            reduction="sum",
            zero_infinity=False,
        )
        for form in word.forms
    ]
    return float(torch.logsumexp(torch.stack(each), 0))
