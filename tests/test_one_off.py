"""`wpatch.patch`: one patch between two clips, against a plain hook and openai-whisper's own decode."""

import numpy as np
import pytest
import torch
import whisper

import wpatch
from tests.conftest import random_whisper
from tests.reference import reference_patched_run
from wpatch.errors import WpatchError
from wpatch.patching.encoder import site_states
from wpatch.stimuli.audio import log_mel


def tone(freq: float, seconds: float = 0.8, rate: int = 16000) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    return (0.3 * np.sin(2 * np.pi * freq * t) * np.hanning(len(t))).astype(np.float32)


@pytest.fixture(scope="module")
def model():
    return random_whisper()


def decode(model, features) -> str:
    options = whisper.DecodingOptions(language="en", fp16=False, without_timestamps=True, sample_len=8)
    return whisper.decode(model, features, options)[0].text.strip()


@pytest.mark.parametrize(
    "site, s, t, window, alpha",
    [("block_out", 0, 2, "all", 1.0), ("mlp_out", 1, 1, [10, 40], 0.5), ("resid_pre", 2, 0, "word", 1.0)],
)
def test_patch_is_the_plain_hook_and_whisper_decode(model, site, s, t, window, alpha):
    donor, recipient = tone(300), tone(1200, seconds=0.5)
    found = wpatch.patch(model, donor, recipient, site=site, source_layer=s, target_layer=t, window=window, alpha=alpha)
    mels = [log_mel(a, 80)[None] for a in (donor, recipient)]
    states, _ = site_states(model.encoder, mels[0], {site})
    start, end = found.patch.start, found.patch.end
    if window == "all":
        assert (start, end) == (0, 1500)
    elif window == "word":  # where either clip is spoken: the donor's 0.8 s (40 frames) and the recipient's 0.5 s
        assert 0 <= start < 10 and 35 <= end <= 45
    else:
        assert [start, end] == window
    weight = torch.zeros(1, 1500, 1)
    weight[:, start:end] = alpha
    features = reference_patched_run(model.encoder, mels[1], t, site, states[site][s], weight)
    # float32 encoder outputs of order 1: the engine and the plain hook differ by rounding only
    torch.testing.assert_close(found.encoder_output, features[0], atol=1e-4, rtol=1e-4)
    assert found.patched_transcript == decode(model, features)
    assert found.donor_transcript == decode(model, model.embed_audio(mels[0]))
    assert found.recipient_transcript == decode(model, model.embed_audio(mels[1]))


def test_alpha_zero_is_the_recipient_and_bad_input_is_refused(model):
    donor, recipient = tone(300), tone(1200)
    found = wpatch.patch(model, donor, recipient, site="attn_out", source_layer=0, target_layer=1, alpha=0.0)
    assert found.patched_transcript == found.recipient_transcript
    with pytest.raises(WpatchError, match="takes an encoder site .*not 'dec_resid'; use wpatch.run"):
        wpatch.patch(model, donor, recipient, site="dec_resid")
    with pytest.raises(WpatchError, match="target_layer 3 is outside the encoder's 3 blocks"):
        wpatch.patch(model, donor, recipient, target_layer=3)
    with pytest.raises(WpatchError, match=r"window \[40, 10\] is outside"):
        wpatch.patch(model, donor, recipient, window=[40, 10])


def test_its_repr_is_one_line_without_the_tensor(model):
    found = wpatch.patch(model, tone(300), tone(1200, seconds=0.5), site="block_out", source_layer=0, target_layer=2)
    shown = repr(found)
    assert "\n" not in shown and "tensor" not in shown and len(shown) < 300
    assert shown.startswith(f"OnePatch(donor={found.donor_transcript!r}, recipient={found.recipient_transcript!r}")
    assert f"block_out 0->2, frames 0-{model.dims.n_audio_ctx}, alpha 1.0; encoder_output (" in shown
