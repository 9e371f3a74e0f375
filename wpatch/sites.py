"""The patch sites: one frozen `Site` per place a patch can go, and every rule about sites read from it.

A site names an activation inside one block of the encoder or the decoder. Encoder sites are patched on encoder
frames (a window, or sliding windows), decoder sites on the token positions that read the word out, except
`enc_to_dec`, which patches the encoder output one decoder block's cross-attention reads (on frames, from no
source block), and `cnn_out`, the wav2vec2 family's alone: its convolutional feature encoder's output, before
block 0 (its one layer is 0; Whisper refuses it, `check_whisper_sites`). A new encoder site is one entry here
(with the `Hook` kind it reads); a decoder site one entry and its place in
`wpatch.patching.decoding.decoder_states`. A site's hook kind is a `Hook`, never a string: an entry whose stack
cannot read its kind is refused when it is made, and a setting that cannot handle a kind (AtP*'s QK fix:
`wpatch.patching.attribution_qk.check_qk_sites`) refuses the run in one line.
"""

from dataclasses import dataclass
from enum import Enum
from typing import Literal

from wpatch.errors import WpatchError


class Hook(Enum):
    """What a site hooks. Encoder kinds: a forward pre-hook on the block (its input), or the output of the block or of
    one of its submodules (`module`); decoder kinds: the point of `wpatch.patching.decoding.decoder_states` they edit
    (a value in words)."""

    INPUT = "input"  # the block's input: the residual stream before it
    OUTPUT = "output"  # the block's output: the residual stream after it
    ATTN = "attn"  # what the self-attention adds to the stream
    MLP = "mlp"  # what the MLP adds to the stream
    ATTN_LN = "attn_ln"  # the self-attention's input (its layer norm's output); no site reads it yet
    FEATURES = "feature encoder output"  # a CTC model's convolutional feature encoder's output, before block 0
    DEC_BLOCK_OUT = "block output"
    DEC_ATTN = "self-attention output"
    DEC_MLP = "MLP output"
    DEC_CROSS = "cross-attention output"
    CROSS_KEYS_VALUES = "cross-attention keys and values"

    @property
    def stack(self) -> str:
        """The stack whose blocks it hooks."""
        return "encoder" if self in ENCODER_HOOKS else "decoder"

    @property
    def module(self) -> str | None:
        """An encoder kind's submodule of the block whose output it is (None: the block itself)."""
        return None if self in (Hook.INPUT, Hook.OUTPUT) else self.value

    @property
    def is_stream(self) -> bool:
        """The whole residual stream (before or after a block), not a part of it."""
        return self in (Hook.INPUT, Hook.OUTPUT)


ENCODER_HOOKS = frozenset({Hook.INPUT, Hook.OUTPUT, Hook.ATTN, Hook.MLP, Hook.ATTN_LN, Hook.FEATURES})


@dataclass(frozen=True)
class Site:
    """One patch site.

    name: the value of `--model.sites` and of the rows' `site` column.
    stack: "encoder" or "decoder": the blocks its source and target layers index.
    positions: "frames" (encoder frames: windows and sweeps) or "tokens" (the decoder positions that read the
        word out: window "tokens").
    has_source_layer: False where the patch reads no donor block (only same-layer pairs, s == t).
    hook: the `Hook` kind it hooks, one of its stack's.
    donor: where the donor's activation comes from, in words: the donor clip's clean encoder run at block s, the
        donor decoder run (over the donor clip, teacher-forced on the donor word) at block s, or the donor clip's
        clean encoder output.
    patches: what it replaces, in words (the README's site table).
    before_blocks: it is before encoder block 0 (the feature encoder's output): its one layer is 0, as source and
        target (layer 0's input before the feature projection, the positional convolution and block 0).
    whisper: Whisper has it (False: the wav2vec2 family only; Whisper refuses it in one line).
    """

    name: str
    stack: Literal["encoder", "decoder"]
    positions: Literal["frames", "tokens"]
    has_source_layer: bool
    hook: Hook
    donor: str
    patches: str
    before_blocks: bool = False
    whisper: bool = True

    def __post_init__(self):
        if not isinstance(self.hook, Hook) or self.hook.stack != self.stack:
            kinds = ", ".join(h.name for h in Hook if h.stack == self.stack)
            raise WpatchError(
                f"site {self.name}: hook {self.hook!r} is not a hook kind of the {self.stack} (wpatch.sites.Hook); "
                f"give one of {kinds}"
            )

    @property
    def in_decoder(self) -> bool:
        return self.stack == "decoder"

    @property
    def replaces_stream(self) -> bool:
        """Its activation is the whole residual stream after an encoder block: replaced on every frame, the
        patched run no longer depends on the recipient (the whole-block fast path)."""
        return self.hook is Hook.OUTPUT


RESID_PRE = Site(
    "resid_pre", "encoder", "frames", True, Hook.INPUT, "donor clip's encoder, block *s*", "block *t*'s input"
)
ATTN_OUT = Site(
    "attn_out",
    "encoder",
    "frames",
    True,
    Hook.ATTN,
    "donor clip's encoder, block *s*",
    "what block *t*'s self-attention adds",
)
MLP_OUT = Site(
    "mlp_out",
    "encoder",
    "frames",
    True,
    Hook.MLP,
    "donor clip's encoder, block *s*",
    "what block *t*'s MLP adds",
)
BLOCK_OUT = Site(
    "block_out",
    "encoder",
    "frames",
    True,
    Hook.OUTPUT,
    "donor clip's encoder, block *s*",
    "block *t*'s output (the original's patch)",
)
DEC_RESID = Site(
    "dec_resid",
    "decoder",
    "tokens",
    True,
    Hook.DEC_BLOCK_OUT,
    "donor decoder run, block *s*",
    "decoder block *t*'s output",
)
DEC_ATTN_OUT = Site(
    "dec_attn_out",
    "decoder",
    "tokens",
    True,
    Hook.DEC_ATTN,
    "donor decoder run, block *s*",
    "what decoder block *t*'s self-attention adds",
)
DEC_MLP_OUT = Site(
    "dec_mlp_out",
    "decoder",
    "tokens",
    True,
    Hook.DEC_MLP,
    "donor decoder run, block *s*",
    "what decoder block *t*'s MLP adds",
)
DEC_CROSS_OUT = Site(
    "dec_cross_out",
    "decoder",
    "tokens",
    True,
    Hook.DEC_CROSS,
    "donor decoder run, block *s*",
    "what decoder block *t*'s cross-attention adds",
)
ENC_TO_DEC = Site(
    "enc_to_dec",
    "decoder",
    "frames",
    False,
    Hook.CROSS_KEYS_VALUES,
    "donor clip's encoder output",
    "the encoder output decoder block *t*'s cross-attention reads",
)
CNN_OUT = Site(
    "cnn_out",
    "encoder",
    "frames",
    False,
    Hook.FEATURES,
    "donor clip's CNN",
    "the CNN feature encoder's output (wav2vec2 family only)",
    before_blocks=True,
    whisper=False,
)

SITES: dict[str, Site] = {
    site.name: site
    for site in (
        RESID_PRE,
        ATTN_OUT,
        MLP_OUT,
        BLOCK_OUT,
        DEC_RESID,
        DEC_ATTN_OUT,
        DEC_MLP_OUT,
        DEC_CROSS_OUT,
        ENC_TO_DEC,
        CNN_OUT,
    )
}
SiteName = Literal[tuple(SITES)]  # the choices `wpatch predict --help` lists


def site_named(name: str) -> Site:
    """The site called `name`; an unknown name is refused with the list of sites."""
    if name not in SITES:
        raise WpatchError(f"unknown patch site {name!r}; use one of {', '.join(SITES)}")
    return SITES[name]


def check_whisper_sites(names) -> None:
    """Refuse, in one line, a site Whisper lacks (the wav2vec2 family's feature encoder output)."""
    for name in names:
        if name in SITES and not SITES[name].whisper:
            others = ", ".join(n for n, site in SITES.items() if site.whisper)
            raise WpatchError(f"site {name} is the wav2vec2 family's; a Whisper model has no such site: use {others}")


def sites_table() -> str:
    """The README's table of sites, in Markdown."""
    lines = [
        "| site | stack | positions | source layer | what it patches | donor from |",
        "|---|---|---|---|---|---|",
    ]
    for s in SITES.values():
        source = "0 only" if s.before_blocks else "yes" if s.has_source_layer else "no (s = t only)"
        lines.append(f"| `{s.name}` | {s.stack} | {s.positions} | {source} | {s.patches} | {s.donor} |")
    return "\n".join(lines) + "\n"
