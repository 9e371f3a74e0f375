"""A recorded word heard in its recording's context: the natural-speech case of a carrier sentence.

The clip is the recording around the word: the whole recording when it fits the 30 s Whisper hears, else a
segment of at most 30 s cut at word boundaries of the alignment around the word (`segment`). The word's frames
(the `word` window) are its aligned span's times relative to the segment's start (`recorded_frames`: no Whisper
alignment needed), and the measures read the word after the segment's words before it, as for a carrier: the
segment's words with `{}` in place of the word (`context_text`) play the carrier's part, one per side since each
recording has its own words. `wpatch stimuli` writes them as `context_a`, `context_start_a`, `context_end_a` (and
the same for b); `wpatch.stimuli.pairs_file` checks them.
"""

import math

import pandas as pd

from wpatch.stimuli.audio import SAMPLE_RATE

MAX_SECONDS = 30.0  # Whisper hears the first 30 s of a clip
FRAMES_PER_SECOND = 50  # encoder frames: 20 ms each
EPSILON = 1e-6  # of a frame: times on the 20 ms grid stay on it despite floating point (1.02 s is frame 51)
RECORDED = (
    "the alignment file's word times, relative to the segment's start: frames floor(start x 50) to ceil(end x 50)"
)


def recorded_frames(start: float, end: float, context_start: float, n_ctx: int) -> tuple[int, int]:
    """Encoder frames [first, last) of a word spoken from `start` to `end` s of a recording whose clip is cut from
    `context_start` s (at its nearest sample, as `wpatch.stimuli.spans.cut_span` cuts): the frames the span
    touches, floor(start x 50) to ceil(end x 50) relative to the clip, at least one."""
    offset = round(context_start * SAMPLE_RATE) / SAMPLE_RATE
    first = max(0, math.floor((start - offset) * FRAMES_PER_SECOND + EPSILON))
    last = math.ceil((end - offset) * FRAMES_PER_SECOND - EPSILON)
    return first, min(max(last, first + 1), n_ctx)


def segment(spans: list[tuple[float, float]], index: int, duration: float) -> tuple[float, float, int, int]:
    """(start, end, first word, last word + 1) of the clip heard around word `index` of a recording `duration` s
    long whose words lie at `spans` (in time order): the whole recording when it fits in 30 s; else the words
    around it, added one at a time before then after (while they fit), the clip running from the end of the word
    before the first (0 for none) to the start of the word after the last (the recording's end for none), the
    silence at its ends trimmed evenly where even that is longer than 30 s."""
    if duration <= MAX_SECONDS:
        return 0.0, duration, 0, len(spans)

    def bounds(lo: int, hi: int) -> tuple[float, float]:
        return (spans[lo - 1][1] if lo > 0 else 0.0), (spans[hi][0] if hi < len(spans) else duration)

    if spans[index][1] - spans[index][0] > MAX_SECONDS:
        raise ValueError(f"the word lasts {spans[index][1] - spans[index][0]:.1f} s, longer than {MAX_SECONDS:.0f} s")
    lo, hi, grown = index, index + 1, True
    while grown:
        grown = False
        if lo > 0 and spans[hi - 1][1] - spans[lo - 1][0] <= MAX_SECONDS:
            lo, grown = lo - 1, True
        if hi < len(spans) and spans[hi][1] - spans[lo][0] <= MAX_SECONDS:
            hi, grown = hi + 1, True
    start, end = bounds(lo, hi)
    spare = MAX_SECONDS - (spans[hi - 1][1] - spans[lo][0])  # silence the clip may hold around its words
    before, after = spans[lo][0] - start, end - spans[hi - 1][1]
    if before + after > spare:  # long silences at the ends: keep as much of each as fits, evenly
        keep = min(before, max(spare / 2, spare - after))
        start, end = spans[lo][0] - keep, spans[hi - 1][1] + min(after, spare - keep)
    return start, end, lo, hi


def context_text(words: list[str], index: int) -> str:
    """The words with `{}` in place of word `index`."""
    return " ".join("{}" if i == index else word for i, word in enumerate(words))


def with_context(tokens: pd.DataFrame, durations: dict[str, float]) -> pd.DataFrame:
    """`tokens` (`wpatch.stimuli.corpora.TOKEN_COLUMNS`, words of aligned recordings) with each word's context:
    `context` (the clip's words, `{}` for the word), `context_start` and `context_end` (the clip, seconds in the
    recording; `durations`: each recording's length; every span already checked to fit in 30 s, as
    `wpatch.stimuli.corpora` checks them)."""
    tokens = tokens.copy()
    tokens[["context", "context_start", "context_end"]] = pd.DataFrame(
        {"context": "", "context_start": 0.0, "context_end": 0.0}, index=tokens.index
    )
    for audio, words in tokens.groupby("audio", sort=False):
        words = words.sort_values("start", kind="stable")
        spans = list(zip(words.start, words.end))
        for i, row in enumerate(words.itertuples()):
            start, end, lo, hi = segment(spans, i, durations[audio])
            tokens.loc[row.Index, ["context", "context_start", "context_end"]] = (
                context_text(list(words.word.iloc[lo:hi]), i - lo),
                start,
                end,
            )
    return tokens
