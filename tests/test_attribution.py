"""Attribution patching against real patching: the estimate of a one-frame, small-alpha patch is the finite
difference of real patching, at every encoder site and block; a clip patched into itself is estimated 0; the
metric is the one `effect` normalises; and the map's windows and real-patching cells."""

import math

import pytest
import torch

from tests.conftest import random_whisper
from wpatch.patching.attribution import ENCODER_SITES, Cell, attribute, real_deltas, word_metric
from wpatch.patching.attribution_map import cells_to_patch, normalised, speech_windows
from wpatch.patching.decoding import cross_attention_cache, word_logprobs
from wpatch.text import scored_word, tokenizer_for, word_tokens

ALPHA = 0.1
EPS32 = torch.finfo(torch.float32).eps
# M is a difference of two log-probabilities of about -11 nats: float32 rounds each to 2^-20, so a real patch's
# change of M is known to about 2 * 2^-20, its finite difference to that over alpha
ROUNDING = 2 * 2.0**-20 / ALPHA
# the finite difference carries the second-order term alpha * M'' / 2; at alpha 0.1 it stays within 5 %
RELATIVE = 0.05


def logprob_scale(model, mels, words) -> torch.Tensor:
    """|log P(a)| + |log P(b)| per clip: M is their difference, so its rounding is a few units of these, not of M.
    Two passes that batch the same clip differently sum each log-probability in another float32 order."""
    with torch.no_grad():
        logps = word_logprobs(model, cross_attention_cache(model, model.encoder(mels)), [list(w) for w in words])
    return torch.tensor([abs(lp[a]) + abs(lp[b]) for lp, (a, b) in zip(logps, words)])


# a log-probability comes out of a matmul, a max, an exp-sum and a log, each rounding to about one unit of its
# magnitude; a pass of another batch shape can differ in each: 16 units of the log-probabilities' scale
METRIC_ULPS = 16


@pytest.fixture(scope="module")
def case():
    model = random_whisper()
    tokenizer = tokenizer_for(model.dims)
    words = [
        (scored_word(tokenizer, word_tokens(tokenizer, "bat")), scored_word(tokenizer, word_tokens(tokenizer, "pat")))
    ]
    mels = torch.randn(2, 80, 3000, generator=torch.Generator().manual_seed(1))
    return model, words, mels[:1], mels[1:], attribute(model, mels[:1], mels[1:], words)


def test_metric_is_the_logit_difference_effect_reads(case):
    """word_metric (differentiable, openai-whisper's TextDecoder) = the pipeline's word_logprobs difference."""
    model, words, recipient, _, found = case
    with torch.no_grad():
        features = model.encoder(recipient)
        logps = word_logprobs(model, cross_attention_cache(model, features), [list(words[0])])[0]
        metric = word_metric(model, features, words)
    assert metric.item() == pytest.approx(logps[words[0][0]] - logps[words[0][1]], abs=1e-4)
    assert found.metric.item() == pytest.approx(metric.item(), abs=1e-4)


@pytest.mark.parametrize("site", ENCODER_SITES)
def test_estimate_is_the_finite_difference_of_real_patching(case, site):
    """For every block, on the frame where the estimate is largest (so that it stands above the rounding):
    |(M(alpha) - M(0)) / alpha - estimate| <= RELATIVE * |estimate| + ROUNDING."""
    model, words, recipient, donor, found = case
    s = ENCODER_SITES.index(site)
    for layer in range(model.dims.n_audio_layer):
        frame = int(found.frames[0, s, layer].abs().argmax())
        estimate = found.frames[0, s, layer, frame].item()
        assert abs(estimate) > 3 * ROUNDING  # a check, not a comparison of two roundings
        masks = [torch.zeros(model.dims.n_audio_ctx) for _ in (0, ALPHA)]
        masks[1][frame] = ALPHA
        cells = [Cell(0, site, layer, mask) for mask in masks]  # M(0) through the same path as M(alpha)
        at_zero, at_alpha = real_deltas(model, recipient, donor, words, cells).tolist()
        finite_difference = (at_alpha - at_zero) / ALPHA
        assert abs(finite_difference - estimate) <= RELATIVE * abs(estimate) + ROUNDING, (site, layer, frame)


def test_a_clip_patched_into_itself_is_estimated_zero(case):
    model, words, recipient, _, _ = case
    found = attribute(model, recipient, recipient, words)
    assert found.frames.abs().max().item() == 0.0
    tolerance = METRIC_ULPS * EPS32 * logprob_scale(model, recipient, words).item()
    assert abs(found.metric.item() - found.donor_metric.item()) <= tolerance


def test_graddrop_changes_only_the_gradient_upstream_of_the_dropped_block(case):
    """Dropping block l's attention and MLP gradient leaves every estimate downstream of them (block l's output,
    every site of the later blocks) exactly as it was, and changes block l's input's."""
    model, words, recipient, donor, found = case
    dropped = attribute(model, recipient, donor, words, graddrop=True).dropped
    n = model.dims.n_audio_layer
    assert dropped.shape == (1, n, len(ENCODER_SITES), n, model.dims.n_audio_ctx)
    resid_pre, block_out = ENCODER_SITES.index("resid_pre"), ENCODER_SITES.index("block_out")
    for block in range(n):
        torch.testing.assert_close(dropped[0, block, block_out, block:], found.frames[0, block_out, block:])
        torch.testing.assert_close(dropped[0, block, :, block + 1 :], found.frames[0, :, block + 1 :])
        assert not torch.allclose(dropped[0, block, resid_pre, block], found.frames[0, resid_pre, block])


def test_windows_cover_every_frame_once():
    windows = speech_windows((40, 52), 5, 1500)
    assert [(label, a, b) for label, a, b, _ in windows] == [
        ("40-45", 40, 45),
        ("45-50", 45, 50),
        ("50-52", 50, 52),
        ("rest", 0, 1500),
    ]
    assert torch.equal(sum(mask for *_, mask in windows), torch.ones(1500))


def test_cells_to_patch():
    estimates = [0.1, -3.0, 2.0, 0.0, 0.5]
    assert cells_to_patch(estimates, False, 0, 2, seed=0) == {1: "verify", 2: "verify"}
    assert cells_to_patch(estimates, True, 0, 0, seed=0) == dict.fromkeys(range(5), "validate")
    sample = cells_to_patch(estimates, True, 2, 1, seed=3)
    assert list(sample.values()).count("validate") == 2 and sample == cells_to_patch(estimates, True, 2, 1, seed=3)
    assert sample[1] in ("validate", "verify")


def test_normalised_like_effect():
    # denoising: the recipient is the target's clean run (0); moving it by the whole gap reaches 1
    assert normalised(2.0, 3.0, 1.0, "denoising", 1.0) == pytest.approx(1.0)
    # noising: the recipient is the source's clean run (1); moving it back by the gap reaches 0
    assert normalised(-2.0, 3.0, 1.0, "noising", 1.0) == pytest.approx(0.0)
    assert math.isnan(normalised(0.1, 1.2, 1.0, "denoising", 1.0))


def test_rows_sharing_clips_equal_rows_alone():
    """A pair's two directions (one row's donor is the other's recipient) and a donor shared by two rows are read
    from one clean run; every row's estimates, M and donor M equal that row attributed on its own."""
    model = random_whisper()
    tokenizer = tokenizer_for(model.dims)
    word = {w: scored_word(tokenizer, word_tokens(tokenizer, w)) for w in ("bat", "pat", "cat")}
    a, b, c = torch.randn(3, 80, 3000, generator=torch.Generator().manual_seed(2))
    recipients, donors = torch.stack([b, a, c, a]), torch.stack([a, b, a, a])  # a->b, b->a, a->c, a->a
    words = [(word["bat"], word["pat"]), (word["pat"], word["bat"]), (word["bat"], word["cat"])]
    words.append((word["bat"], word["cat"]))
    together = attribute(model, recipients, donors, words)
    for row in range(4):
        alone = attribute(model, recipients[row : row + 1], donors[row : row + 1], words[row : row + 1])
        # a pass of 4 rows sums in another float32 order than a pass of 1: a few rounding units of the quantities
        # summed (the estimates' largest; for M and donor M the log-probabilities they are the difference of)
        scales = {
            "frames": float(alone.frames.abs().max()),
            "metric": float(logprob_scale(model, recipients[row : row + 1], words[row : row + 1])),
            "donor_metric": float(logprob_scale(model, donors[row : row + 1], words[row : row + 1])),
        }
        for field, scale in scales.items():
            got, want = getattr(together, field)[row], getattr(alone, field)[0]
            torch.testing.assert_close(got, want, rtol=0, atol=METRIC_ULPS * EPS32 * scale)
