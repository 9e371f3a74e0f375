"""`wpatch.patch`: one patch between two clips, without a pairs file, a Trainer or a run folder: a quick look in a
notebook at what one encoder site of one donor block does to one recipient's transcript.

It runs the same engine as a run (`wpatch.patching.encoder.encode_plan`, then greedy decoding as in
`wpatch.patching.decoding`), on encoder sites only: the decoder sites patch at the tokens that read a word out,
which needs the words (use `wpatch.run` with a two-word pairs file).
"""

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from whisper.model import Whisper

from wpatch.errors import WpatchError
from wpatch.patching.decoding import cross_attention_cache, greedy_transcripts
from wpatch.patching.encoder import Patch, PatchedRun, encode_plan
from wpatch.sites import BLOCK_OUT, SITES
from wpatch.stimuli.audio import load_audio, log_mel, speech_span


@dataclass(frozen=True)
class OnePatch:
    """What `wpatch.patch` found: the clean transcripts of both clips and the recipient's patched one; the patch
    (site, layers, frames [start, end) at 20 ms each, alpha); the patched run's encoder output (n_ctx, d)."""

    donor_transcript: str
    recipient_transcript: str
    patched_transcript: str
    patch: Patch
    encoder_output: torch.Tensor

    def __repr__(self) -> str:
        """One line: the three transcripts, the patch and the encoder output's shape (not its values)."""
        p = self.patch
        return (
            f"OnePatch(donor={self.donor_transcript!r}, recipient={self.recipient_transcript!r}, "
            f"patched={self.patched_transcript!r}; {p.site} {p.source_layer}->{p.target_layer}, frames "
            f"{p.start}-{p.end}, alpha {p.alpha}; encoder_output {tuple(self.encoder_output.shape)})"
        )


def clip_audio(clip) -> np.ndarray:
    """A clip as 16 kHz mono samples: an audio file's path, or the samples themselves."""
    if isinstance(clip, (str, Path)):
        return load_audio(clip)
    return np.asarray(clip, dtype=np.float32)


def frames(window, donor: np.ndarray, recipient: np.ndarray, n_ctx: int) -> tuple[int, int]:
    """A window as encoder frames [start, end): "all", "word" (where either clip is spoken) or [start, end]."""
    if window == "all":
        return 0, n_ctx
    if window == "word":
        spans = [speech_span(audio, n_ctx=n_ctx) for audio in (donor, recipient)]
        return min(s[0] for s in spans), max(s[1] for s in spans)
    try:
        start, end = (int(v) for v in window)
    except (TypeError, ValueError):
        raise WpatchError(f"window {window!r} is not all, word or [start, end] in 20 ms frames") from None
    if not 0 <= start < end <= n_ctx:
        raise WpatchError(f"window [{start}, {end}] is outside the encoder's {n_ctx} frames; use 0 <= start < end")
    return start, end


@torch.no_grad()
def patch(
    model: str | Whisper,
    donor,
    recipient,
    site: str = BLOCK_OUT.name,
    source_layer: int = 0,
    target_layer: int = 0,
    window="all",
    alpha: float = 1.0,
    language: str = "en",
    max_tokens: int = 8,
) -> OnePatch:
    """The donor clip's activation at `site` of encoder block `source_layer` mixed into the recipient clip's run
    at block `target_layer` (`alpha` 1 = replace) on `window`'s frames, and the transcripts that come out.
    `model`: a model spec or a loaded openai-whisper model; `donor`, `recipient`: audio files or 16 kHz samples."""
    from wpatch.models.loading import keep_models, load_model

    if site not in SITES or SITES[site].in_decoder or not SITES[site].whisper:
        encoder_sites = ", ".join(name for name, s in SITES.items() if not s.in_decoder and s.whisper)
        raise WpatchError(f"wpatch.patch takes an encoder site ({encoder_sites}), not {site!r}; use wpatch.run")
    if isinstance(model, str):
        with keep_models():
            model = load_model(model)
    n_layer, n_ctx = model.dims.n_audio_layer, model.dims.n_audio_ctx
    for name, layer in (("source_layer", source_layer), ("target_layer", target_layer)):
        if not 0 <= layer < n_layer:
            raise WpatchError(f"{name} {layer} is outside the encoder's {n_layer} blocks; use 0..{n_layer - 1}")
    audio = {0: clip_audio(donor), 1: clip_audio(recipient)}
    device = next(model.parameters()).device
    mels = {clip: log_mel(samples, model.dims.n_mels).to(device) for clip, samples in audio.items()}
    start, end = frames(window, audio[0], audio[1], n_ctx)
    one = Patch(site, source_layer, target_layer, start, end, alpha)
    run = PatchedRun(recipient_clip=1, donor_clip=0, patch=one)
    outputs = encode_plan(model.encoder, mels, [run], {0, 1})
    rows = [outputs.clean[0], outputs.clean[1], outputs.patched[run]]
    features = outputs.features[rows]
    texts = greedy_transcripts(model, cross_attention_cache(model, features), language, max_tokens=max_tokens)
    return OnePatch(*texts, patch=one, encoder_output=features[2])
