"""wpatch: batched activation patching on OpenAI Whisper's encoder, with PyTorch Lightning.

Modules: `models` (model specs, offline weights), `tts` and `audio` (speech stimuli), `pairs` and
`stimuli` (pairs tables, the packaged sets), `patching` (patch sites, fast paths, hook references),
`decoding` (transcripts, word log-probabilities), `module` (the LightningModule), `writer` (tables,
figures, TensorBoard). The DataModules live in the top-level `datamodules` package.
"""
