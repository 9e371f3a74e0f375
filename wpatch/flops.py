"""The arithmetic of each phase of a patching run, counted from Whisper's dimensions.

A multiply-add counts as 2 floating-point operations. Only the matrix products are counted (linear layers, the
two convolutions, attention's scores and weighted sum, the vocabulary logits), as `torch.utils.flop_counter`
does: layer norms, GELU, softmax and residual adds are a few operations per element, under 1% of a block on
tiny.en. Attention is counted in full (causal masks included), as the kernels compute it.
"""

from dataclasses import dataclass

from whisper.model import ModelDimensions


def matmul(rows: int, inner: int, columns: int) -> int:
    """(rows, inner) @ (inner, columns)."""
    return 2 * rows * inner * columns


@dataclass(frozen=True)
class AttentionWork:
    """One multi-head attention over `queries` query and `keys` key positions (per sequence, `sequences` of them):
    the query and output projections, the key and value projections of the `projected` keys computed here (all
    of them unless given: a cache holds the rest) and the two products."""

    width: int
    queries: int
    keys: int
    sequences: int = 1
    projected: int | None = None

    @property
    def flops(self) -> int:
        d, q, k = self.width, self.queries, self.keys
        projected = k if self.projected is None else self.projected
        projections = 2 * matmul(q, d, d) + 2 * matmul(projected, d, d)
        return self.sequences * (projections + 2 * matmul(q, d, k))


@dataclass(frozen=True)
class MlpWork:
    """The block's MLP (d -> 4d -> d) on `tokens` positions."""

    width: int
    tokens: int

    @property
    def flops(self) -> int:
        return 2 * matmul(self.tokens, self.width, 4 * self.width)


@dataclass(frozen=True)
class EncoderBlocksWork:
    """`blocks` encoder blocks, each on `clips` sequences of the audio context."""

    dims: ModelDimensions
    clips: int
    blocks: int

    @property
    def attention(self) -> AttentionWork:
        ctx = self.dims.n_audio_ctx
        return AttentionWork(self.dims.n_audio_state, ctx, ctx, self.clips)

    @property
    def mlp(self) -> MlpWork:
        return MlpWork(self.dims.n_audio_state, self.clips * self.dims.n_audio_ctx)

    @property
    def flops(self) -> int:
        return self.blocks * (self.attention.flops + self.mlp.flops)


@dataclass(frozen=True)
class CleanEncoderWork:
    """A clean encoder pass of `clips` log-mels: the two convolutions (kernel 3; the second halves the frames to
    the audio context) and every block."""

    dims: ModelDimensions
    clips: int

    @property
    def flops(self) -> int:
        d, ctx = self.dims.n_audio_state, self.dims.n_audio_ctx
        convolutions = matmul(2 * ctx, 3 * self.dims.n_mels, d) + matmul(ctx, 3 * d, d)
        return self.clips * convolutions + EncoderBlocksWork(self.dims, self.clips, self.dims.n_audio_layer).flops


@dataclass(frozen=True)
class CrossKeysValuesWork:
    """Every decoder block's cross-attention keys and values of `outputs` encoder outputs."""

    dims: ModelDimensions
    outputs: int

    @property
    def flops(self) -> int:
        d = self.dims.n_text_state
        return self.dims.n_text_layer * 2 * matmul(self.outputs * self.dims.n_audio_ctx, d, d)


@dataclass(frozen=True)
class DecoderPassWork:
    """One decoder pass (cross-attention keys and values cached): `sequences` token sequences of `tokens` new
    positions each after `past` cached ones, cross-attending to the audio context, and the vocabulary logits of
    `logits` positions in all."""

    dims: ModelDimensions
    sequences: int
    tokens: int
    past: int
    logits: int

    @property
    def flops(self) -> int:
        d, n, t = self.dims.n_text_state, self.sequences, self.tokens
        self_attention = AttentionWork(d, t, self.past + t, n, projected=t).flops
        cross = AttentionWork(d, n * t, self.dims.n_audio_ctx, projected=0).flops
        per_block = self_attention + cross + MlpWork(d, n * t).flops
        return self.dims.n_text_layer * per_block + matmul(self.logits, d, self.dims.n_vocab)


@dataclass(frozen=True)
class GreedyWork:
    """Greedy decoding of `outputs` encoder outputs: the `prefix` start tokens in one pass, then `steps` - 1
    one-token passes; each pass takes the logits of its last position."""

    dims: ModelDimensions
    outputs: int
    prefix: int
    steps: int

    @property
    def flops(self) -> int:
        first = DecoderPassWork(self.dims, self.outputs, self.prefix, 0, self.outputs).flops
        rest = (
            DecoderPassWork(self.dims, self.outputs, 1, self.prefix + i, self.outputs) for i in range(self.steps - 1)
        )
        return first + sum(w.flops for w in rest)


@dataclass(frozen=True)
class ScoringWork:
    """Teacher-forced scoring: `outputs` encoder outputs, `sequences` token sequences of `length` each, and the
    logits of `scored` positions in all."""

    dims: ModelDimensions
    outputs: int
    sequences: int
    length: int
    scored: int

    @property
    def flops(self) -> int:
        d, ctx = self.dims.n_text_state, self.dims.n_audio_ctx
        n, t = self.outputs * self.sequences, self.length
        per_block = (
            AttentionWork(d, t, t, n).flops + AttentionWork(d, n * t, ctx, projected=0).flops + MlpWork(d, n * t).flops
        )
        return self.dims.n_text_layer * per_block + matmul(self.scored, d, self.dims.n_vocab)
