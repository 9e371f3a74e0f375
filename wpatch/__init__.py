"""wpatch: batched activation patching on OpenAI Whisper's encoder and decoder, with PyTorch Lightning.

The package by concern (docs/architecture.md follows one row through it): `models` (which Whisper, offline
weights), `stimuli` (pairs files, speech synthesis, recordings, log-mels, screening, the packaged sets),
`patching` (the plan of a batch, the encoder and decoder engines, the measures, the LightningModule), `run_folder`
(the run folder, the prediction writer, the settings a run records), `analysis` (tables, figures, report.md,
TensorBoard, comparisons); beneath them the names every part shares: `sites` (the site registry), `rows` (the
batch, the result row and its measure schema), `text` (how a word is normalised and scored), `errors`, `atomic`,
`faults`; and `cli` (the `wpatch` command). The DataModules live in the top-level `datamodules` package.

Glossary (names in the code follow it):

- word pair: two words A and B from a pairs file (`pair_id`); an item is one pair in one pair direction.
- pair direction (column `direction`): `a->b` makes word A the source word and B the target word, `b->a` the
  reverse.
- source word / target word: the word whose states are patched in / the word whose run they are patched into
  (under denoising); each is spoken by its own clip, the source clip and the target clip.
- donor clip / recipient clip: the clip whose activation is taken / the clip whose encoder run receives it.
- patch direction (column `patch_direction`): `denoising` (donor = source clip, recipient = target clip) or
  `noising` (donor = target clip, recipient = source clip). `donor` says whose clip gave the activation:
  source, target, or control (an unrelated word's clip, put in place of the real donor).
- source layer / target layer: the block the activation is read from (s) / written into (t), an encoder block
  for encoder sites and a decoder block for decoder sites; a layer pair is (s, t). Not to be confused with word
  pairs.
- site: where in a block. Encoder: `resid_pre` (its input), `attn_out`, `mlp_out` (what attention and the MLP
  add), `block_out` (its output). Decoder: `dec_resid` (a decoder block's output), `dec_attn_out`,
  `dec_cross_out`, `dec_mlp_out` (what self-attention, cross-attention and the MLP add), at the tokens that read
  the word out; `enc_to_dec` (the encoder output one decoder block's cross-attention reads).
- window: the encoder frames patched (20 ms each): `all`, `word` (where either word is spoken), `a-b`, or
  `sweep` (sliding windows); for the dec_* sites `tokens` (the decoder positions that read the word out); alpha
  mixes donor into recipient on them (1 = replace).
- clean run: an unpatched encoder run of one clip.

From Python (`wpatch.api`): `wpatch.run(pairs=..., ...)` runs an experiment and returns a `Run`;
`wpatch.load_run(folder)` reads one back (`rows, summary = wpatch.load_run(folder)` still works);
`wpatch.patch(model, donor, recipient, ...)` patches one clip into another. Bad input raises `wpatch.WpatchError`
(one line); Ctrl-C during a run raises `wpatch.RunInterrupted` (a KeyboardInterrupt saying how to continue it).
"""

from wpatch.api import Run, load_run, run
from wpatch.errors import RunInterrupted, WpatchError

__all__ = ["Run", "RunInterrupted", "WpatchError", "load_run", "patch", "run"]


def __getattr__(name: str):
    if name == "patch":  # imported on first use: `import wpatch` stays light (no torch)
        from wpatch.one_off import patch

        return patch
    raise AttributeError(f"module 'wpatch' has no attribute {name!r}")
