"""The patch settings of a run (`PatchSpec`, checked once) and the plan of a batch: one `PlannedRow` per item x
patch setting x patch direction x donor, each naming its patched run (in the encoder, or in the decoder)."""

from dataclasses import dataclass

from wpatch.errors import WpatchError
from wpatch.patching.encoder import Patch, PatchedRun
from wpatch.rows import PairBatch
from wpatch.sites import SITES, site_named
from wpatch.text import ScoredWord

PATCH_DIRECTIONS = ("denoising", "noising")


@dataclass(frozen=True)
class PatchSpec:
    """One patch setting: donor block `source_layer` into recipient block `target_layer` at `site`, on the frames of
    `window`, mixed with weight `alpha`. `window` is the label written to the rows (all, word, a-b, sweep, and
    tokens for the decoder sites that patch the word's token positions); `frames` is [start, end) where it is the
    same for every item, None where it depends on the item (all, word, tokens)."""

    site: str
    source_layer: int
    target_layer: int
    window: str
    frames: tuple[int, int] | None
    alpha: float

    def patch(self, word_frames: tuple[int, int], word_positions: tuple[int, int], n_ctx: int) -> Patch:
        """The patch for an item whose source and target words are spoken on `word_frames` and whose donor word is
        read out at token positions `word_positions` (see `donor_run_tokens`)."""
        spans = {"all": (0, n_ctx), "word": word_frames, "tokens": word_positions}
        start, end = self.frames or spans[self.window]
        return Patch(self.site, self.source_layer, self.target_layer, start, end, self.alpha)


def patch_specs(layer_pairs, sites, windows, sweep, alphas, n_ctx, decoder_layer_pairs=None) -> list[PatchSpec]:
    """Every setting combination (sites x layer pairs x windows x alphas), checked; sweep windows (label "sweep")
    are for same-layer pairs only. Decoder sites take `decoder_layer_pairs` (default: `layer_pairs`); the dec_*
    sites patch the word's tokens (window "tokens": no frame windows, no sweep); enc_to_dec takes same-layer pairs
    only (it has no source layer), a site before block 0 (cnn_out) the pair (0, 0) only. Repeats are dropped, the
    first kept."""
    decoder_layer_pairs = layer_pairs if decoder_layer_pairs is None else decoder_layer_pairs
    pairs_of = {}
    for name in sites:
        of_stack = decoder_layer_pairs if site_named(name).in_decoder else layer_pairs
        pairs_of[name] = of_stack if SITES[name].has_source_layer else [(s, t) for s, t in of_stack if s == t]
        if SITES[name].before_blocks:  # its one layer: 0 (before block 0), as source and target
            pairs_of[name] = [(s, t) for s, t in pairs_of[name] if s == t == 0]
            if not pairs_of[name]:
                raise WpatchError(
                    f"site {name} comes before encoder block 0 and has layer 0 only; give 0 in both "
                    "--model.source_layers and --model.target_layers"
                )
        if not pairs_of[name]:
            raise WpatchError(
                f"site {name} patches {SITES[name].stack} block l from no source layer; give layers with s == t"
            )
    for window in windows:
        span = isinstance(window, (list, tuple)) and len(window) == 2 and 0 <= window[0] < window[1] <= n_ctx
        if window not in ("all", "word") and not span:
            raise WpatchError(f"window {window!r} is not all, word or [start, end] with 0 <= start < end <= {n_ctx}")
    for alpha in alphas:
        if not 0.0 <= alpha <= 1.0:
            raise WpatchError(f"alpha {alpha} is outside [0, 1]; 0 leaves the recipient unchanged, 1 replaces it")
    resolved = [
        (w, None) if isinstance(w, str) else (f"{int(w[0])}-{int(w[1])}", (int(w[0]), int(w[1]))) for w in windows
    ]
    specs = [
        PatchSpec(site, s, t, label, frames, alpha)
        for site in sites
        for s, t in pairs_of[site]
        for label, frames in ([("tokens", None)] if SITES[site].positions == "tokens" else resolved)
        for alpha in alphas
    ]
    if sweep:
        width, stride, end = sweep
        if width < 1 or stride < 1 or not 0 < end <= n_ctx:
            raise WpatchError(f"sweep {sweep} needs width >= 1, stride >= 1 and 0 < end <= {n_ctx}")
        starts = range(0, max(1, end - width + 1), stride)
        specs += [
            PatchSpec(site, s, t, "sweep", (a, min(a + width, n_ctx)), alpha)
            for site in sites
            if SITES[site].positions == "frames"
            for s, t in pairs_of[site]
            if s == t
            for a in starts
            for alpha in alphas
        ]
    return list(dict.fromkeys(specs))


def check_patch_directions(patch_directions) -> None:
    for patch_direction in patch_directions:
        if patch_direction not in PATCH_DIRECTIONS:
            raise WpatchError(f"unknown patch direction {patch_direction!r}; use denoising or noising")


@dataclass(frozen=True)
class PlannedRow:
    """One row to compute: item `item` of the batch (its position), patch setting `spec`, `patch_direction`, and
    `donor` (whose clip gives the activation: source, target or control); `run` is the patched run."""

    item: int
    spec: PatchSpec
    patch_direction: str
    donor: str
    run: PatchedRun


def donor_run_tokens(word: ScoredWord) -> tuple[tuple[int, ...], tuple[int, int]]:
    """The tokens a decoder-site donor run is teacher-forced on (the forced transcript start, then the word's
    first surface form) and the token positions [start, end) that read the word out: the start's last token and
    every word token but the last (position p predicts token p + 1)."""
    form = word.forms[0]
    return (*word.prefix, *form), (len(word.prefix) - 1, len(word.prefix) - 1 + len(form))


def recipient_side(patch_direction: str) -> str:
    """Whose clip's run is patched: the target's when denoising, the source's when noising."""
    return "target" if patch_direction == "denoising" else "source"


def plan_rows(
    batch: PairBatch,
    specs: list[PatchSpec],
    patch_directions,
    control: bool,
    n_ctx: int,
    words: dict[str, list[ScoredWord]],
) -> list[PlannedRow]:
    """Every row of the batch, item by item, then setting, patch direction and donor. Denoising patches the
    source clip's activation into the target clip's run, noising the target's into the source's; the control
    donor (if asked) is an unrelated word's clip put in place of the real donor. `words`: per side (source,
    target, control) each item's word as it is scored (decoder-site donor runs read it)."""
    donor_kinds = ("source", "control") if control else ("source",)
    rows = []
    for b in range(len(batch["item_id"])):
        clip = {side: int(batch[side].clip[b]) for side in ("source", "target", "control")}
        source_span, target_span = batch["source"].span[b], batch["target"].span[b]
        word_frames = (int(min(source_span[0], target_span[0])), int(max(source_span[1], target_span[1])))
        for spec in specs:
            for patch_direction in patch_directions:
                recipient = recipient_side(patch_direction)
                real_donor = "source" if recipient == "target" else "target"
                for kind in donor_kinds:
                    donor = real_donor if kind == "source" else "control"
                    by_token = SITES[spec.site].positions == "tokens"
                    tokens, positions = donor_run_tokens(words[donor][b]) if by_token else ((), (0, 0))
                    run = PatchedRun(clip[recipient], clip[donor], spec.patch(word_frames, positions, n_ctx), tokens)
                    rows.append(PlannedRow(b, spec, patch_direction, donor, run))
    return rows
