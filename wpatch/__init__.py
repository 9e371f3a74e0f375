"""wpatch: batched activation patching on OpenAI Whisper's encoder, with PyTorch Lightning.

Modules: `models` (model specs, offline weights), `tts` and `audio` (speech stimuli), `pairs` and
`stimuli` (pairs tables, the packaged sets), `patching` (patch sites, fast paths, hook references),
`decoding` (transcripts, word log-probabilities), `module` (the LightningModule), `writer` (the run's I/O:
parts, resume, merge), `analysis` (groups, matrices, intervals, summary and figures from the rows alone).
The DataModules live in the top-level `datamodules` package.

`wpatch.load_run(folder)` reads a finished run back: `(rows, summary)`.
"""


def load_run(folder):
    """A run read back: `(rows, summary)`; see `wpatch.analysis.load_run`."""
    from wpatch.analysis import load_run as load

    return load(folder)
