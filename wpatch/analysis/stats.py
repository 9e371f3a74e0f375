"""Bootstrap intervals over pairs, and over pairs and voices together when a run has several voices."""

import warnings

import numpy as np
import pandas as pd

BOOTSTRAP_SAMPLES = 1000


def bootstrap_interval(values: np.ndarray, seed: int = 0) -> tuple[float, float]:
    """95% percentile interval of the mean of `values`: one value per pair (resampling pairs), or a
    (pairs x voices) table, NaN where a pair was not run with a voice (resampling pairs and voices, so the
    interval covers both the words and the speakers)."""
    if len(values) < 2:
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    if values.ndim == 1:
        means = values[rng.integers(0, len(values), (BOOTSTRAP_SAMPLES, len(values)))].mean(axis=1)
    else:
        rows = rng.integers(0, values.shape[0], (BOOTSTRAP_SAMPLES, values.shape[0], 1))
        columns = rng.integers(0, values.shape[1], (BOOTSTRAP_SAMPLES, 1, values.shape[1]))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # a draw of only missing cells has no mean
            means = np.nanmean(values[rows, columns].reshape(BOOTSTRAP_SAMPLES, -1), axis=1)
        means = means[~np.isnan(means)]
    low, high = np.percentile(means, [2.5, 97.5])
    return float(low), float(high)


def pooled_interval(rows: pd.DataFrame, measure: str) -> tuple[float, float, float, int]:
    """(mean, low, high, pairs): the mean over pairs of `measure` (each pair's mean over its rows, NaN left out),
    with a bootstrap 95% interval over pairs, and over voices too when the rows have several."""
    values = rows[["pair_id", "voice"]].assign(value=rows[measure].astype(float)).dropna(subset=["value"])
    per_pair = values.groupby("pair_id")["value"].mean().to_numpy()
    by_voice = values.pivot_table(index="pair_id", columns="voice", values="value", aggfunc="mean")
    low, high = bootstrap_interval(by_voice.to_numpy() if by_voice.shape[1] > 1 else per_pair)
    return (float(per_pair.mean()) if len(per_pair) else float("nan")), low, high, len(per_pair)
