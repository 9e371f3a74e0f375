"""The LightningModule: Lightning glue around one predict step that reads plan -> encode -> decode -> measure.

Its settings are checked here and in `plan`; the work is done by the modules beside it: `plan` (which rows a batch
has), `encoder` (their encoder outputs), `decoder` (their decodings, with any patch inside the decoder:
transcripts, word log-probabilities, languages) and `measures` (the columns of each row); for a CTC model of the
wav2vec2 family, `ctc` (its encoder outputs and readout).
"""

import logging
from dataclasses import replace
from typing import Literal

import lightning as L
import torch
from torch.nn.parallel import DistributedDataParallel
from torch.profiler import record_function

from wpatch.allocator import give_back_freed_buffers, keep_freed_buffers
from wpatch.errors import WpatchError
from wpatch.models.loading import check_languages, load_model
from wpatch.models.wav2vec2 import CTCModel
from wpatch.patching import ctc
from wpatch.patching.attribution_map import attribution_map
from wpatch.patching.decoder import decode_plan, decoding_plan
from wpatch.patching.encoder import encode_plan, layer_pairs
from wpatch.patching.measures import result_rows, words_to_score
from wpatch.patching.options import AttributionOptions, PatchOptions, ReadoutOptions, options_from
from wpatch.patching.plan import check_patch_directions, patch_specs, plan_rows
from wpatch.rows import PairBatch
from wpatch.sites import BLOCK_OUT, SITES, SiteName, check_whisper_sites
from wpatch.text import ScoredWord, WordForm, WrittenTokens, before, scored_word, tokenizer_for

__all__ = ["PatchingModule", "check_precision"]
log = logging.getLogger(__name__)


def check_precision(precision: str, on_gpu: bool) -> None:
    """Refuse a precision the chosen accelerator cannot run Whisper under (Lightning would swap it silently)."""
    precision = str(precision)
    if not on_gpu and precision not in ("32-true", "32", "bf16-mixed"):
        raise WpatchError(
            f"precision {precision} is not supported on the CPU; use --trainer.precision 32-true (or bf16-mixed)"
        )
    if on_gpu and precision.startswith("bf16") and not torch.cuda.is_bf16_supported():
        raise WpatchError(f"precision {precision} needs a GPU with bfloat16 support; use --trainer.precision 16-mixed")


class PatchingModule(L.LightningModule):
    """Activation patching of Whisper's encoder (and decoder) over all layer pairs, with greedy and teacher-forced
    measures.

    The default is the original experiment: the whole output of block t replaced by the source clip's block-s
    output (site block_out, window all, alpha 1, denoising). Every list setting is swept in one run.

    Args:
        model: model spec (see `wpatch.models.loading.load_model`).
        source_layers: donor blocks (default: all).
        target_layers: recipient blocks (default: all).
        sites: where in a block to patch, encoder or decoder (`wpatch.sites`; decoder sites' layers index
            decoder blocks).
        windows: frame windows to patch: "all" (1500 frames), "word" (the frames where the source or target word
            is spoken), or [start, end] in encoder frames (20 ms each).
        sweep: [width, stride, end]: also patch sliding windows [k*stride, k*stride+width) below `end`, same layer
            only (s == t), for (layer x time) maps.
        alphas: interpolation weights: patched = (1 - alpha) * recipient + alpha * donor (1 = replacement).
        directions: patch directions: denoising (source state into the target run, the original) and/or noising
            (target state into the source run).
        control: also patch from a random unrelated word (donor "control") beside the real donor.
        min_separation: rows whose clean runs separate the two words by less than this (nats of logp_source -
            logp_target) are flagged (effect_valid false, effect empty) instead of dividing by about zero.
        word_form: which written forms of a word that has several (an English number: "seven" / "7") the
            log-probability measures score: sum (both: their probabilities added), best (the more probable one,
            per decoding), spelled or numeral (that one alone). A word with one form is scored the same by all.
        language: decoding language (e.g. en); None lets Whisper detect it (multilingual models).
        task: transcribe or translate.
        max_tokens: greedy decoding stops after this many tokens (single words need few).
        decode_chunk: encoder outputs decoded together; bounds the decoder's cross-attention cache (about
            64 x 18 MB for tiny, 64 x 37 MB for base); raise it on a large GPU.
        method: patch (the patches above, only) or atp: also the attribution-patching estimate of every encoder
            site, block and frame (`wpatch.patching.attribution_map`), written to attributions.csv and .npz.
        atp_window: frames per window of attributions.csv over the speech (the rest is one window).
        validate: (atp) patch every window of the map for real beside its estimate (or a random sample of it).
        validate_sample: (atp, validate) cells patched for real per item and patch direction, drawn at random
            (seeded by the item); 0: every cell.
        verify_top: (atp) patch for real the cells with the K largest estimates (absolute) per item and direction.
        graddrop: (atp) AtP*'s GradDrop score beside each estimate (one more forward and backward pass per
            encoder block): large where the estimate is small by cancellation.
        qk_fix: (atp) AtP*'s QK fix: the estimates recompute the attention pattern that a patch's new queries and
            keys make instead of linearising it (`wpatch.patching.attribution_qk`; one (heads, frames, frames)
            pass per site and block).
    """

    def __init__(
        self,
        model: str = "tiny.en",
        source_layers: list[int] | None = None,
        target_layers: list[int] | None = None,
        sites: list[SiteName] = (BLOCK_OUT.name,),
        windows: list[str | list[int]] = ("all",),
        sweep: list[int] | None = None,
        alphas: list[float] = (1.0,),
        directions: list[str] = ("denoising",),
        control: bool = False,
        min_separation: float = 1.0,
        word_form: WordForm = "sum",
        language: str | None = "en",
        task: str = "transcribe",
        max_tokens: int = 8,
        decode_chunk: int = 64,
        method: Literal["patch", "atp"] = "patch",
        atp_window: int = 5,
        validate: bool = False,
        validate_sample: int = 0,
        verify_top: int = 0,
        graddrop: bool = False,
        qk_fix: bool = False,
    ):
        super().__init__()
        self.save_hyperparameters()
        self.patching = options_from(PatchOptions, self.hparams)
        self.readout = options_from(ReadoutOptions, self.hparams)
        self.attribution = options_from(AttributionOptions, self.hparams)
        self.whisper = load_model(model, language)
        dims = self.whisper.dims
        self.ctc = isinstance(self.whisper, CTCModel)  # the wav2vec2 family: encoder sites, CTC readout
        if self.ctc:
            ctc.check_settings(list(sites), method)
        else:
            check_whisper_sites(list(sites))
        check_languages(model, self.whisper.is_multilingual, language)
        self.layer_pairs = layer_pairs(dims.n_audio_layer, source_layers, target_layers)
        self.decoder_layer_pairs = (
            layer_pairs(dims.n_text_layer, source_layers, target_layers, stack="decoder")
            if any(SITES[name].in_decoder for name in sites if name in SITES)
            else []
        )
        self.tokenizer = None if self.ctc else tokenizer_for(dims, language or "en", task)
        self.specs = patch_specs(
            self.layer_pairs,
            list(sites),
            list(windows),
            sweep,
            list(alphas),
            dims.n_audio_ctx,
            self.decoder_layer_pairs,
        )
        check_patch_directions(directions)
        if not self.ctc and not 1 <= max_tokens <= dims.n_text_ctx // 2:
            raise WpatchError(
                f"max_tokens {max_tokens} is outside 1..{dims.n_text_ctx // 2}; single words need about 8"
            )
        if decode_chunk < 1:
            raise WpatchError(
                f"decode_chunk {decode_chunk} decodes nothing; give 1 or more encoder outputs per decoder pass"
            )
        self.attribution.check()
        self.rows_per_item = len(self.specs) * len(directions) * (2 if control else 1)
        # a sparse, non-persistent buffer (used only for word timestamps) that DDP cannot broadcast
        DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(self, ["whisper.alignment_heads"])

    def use_decode_chunk(self, decode_chunk: int) -> None:
        """Decode `decode_chunk` encoder outputs at a time from now on (`--data.batch_size auto` sizes it to the
        GPU), recorded as the run's `decode_chunk`."""
        self.hparams.decode_chunk = decode_chunk
        self.readout = replace(self.readout, decode_chunk=decode_chunk)

    def setup(self, stage: str) -> None:
        """After the DataModule's setup: when the run patches from control donors, say how many items have no
        unrelated word to draw one from (their control is their own source clip). Batches reuse freed buffers
        (`wpatch.allocator`)."""
        keep_freed_buffers()
        data = self.trainer.datamodule
        fallbacks = getattr(data, "control_fallbacks", 0)
        if self.patching.control and fallbacks and self.trainer.is_global_zero:
            log.warning(
                "control donor: %d of %d items have no unrelated word in their language and voice; "
                "their control is the source clip itself (donor_word = source_word)",
                fallbacks,
                len(data.items),
            )

    def teardown(self, stage: str) -> None:
        """After the run: the freed buffers its batches kept go back to the kernel (`wpatch.allocator`)."""
        give_back_freed_buffers()

    def scored_word(self, lang: str, forms: WrittenTokens, carrier: str = "") -> ScoredWord:
        """A word of language `lang` as it is scored: after the run's forced transcript start (in the run's
        language if it has one, else the word's own) and, in a carrier sentence, the carrier's words before it;
        of its written forms, those the run's `word_form` names."""
        readout = self.readout
        tokenizer = tokenizer_for(self.whisper.dims, readout.language or lang, readout.task)
        return scored_word(tokenizer, forms, before(carrier), readout.word_form)

    def predict_step(self, batch: PairBatch, batch_idx: int = 0) -> list[dict] | dict:
        """One row per item and patch (`wpatch.rows.ResultRow`, as column -> value); with method atp, a dict of
        those `rows` and the batch's `attributions` (`wpatch.patching.attribution_map.AttributionMap`)."""
        if not len(batch["item_id"]):  # a process's padding batch: fewer source clips were left than processes
            return []
        patching, readout, model = self.patching, self.readout, self.whisper
        # both words of the item read in the text each side's clip is heard in (a decoding of a clip is read in
        # its own text), and each donor's own word in its clip's text (decoder-site donor runs read it)
        scored = lambda word, side: [  # noqa: E731
            model.dims.spelled(text, carrier) if self.ctc else self.scored_word(lang, forms, carrier)
            for text, lang, forms, carrier in zip(
                batch[word].word, batch[word].lang, batch[word].tokens, batch[side].carrier
            )
        ]
        read = {side: (scored("source", side), scored("target", side)) for side in ("source", "target")}
        words = {"source": read["source"][0], "target": read["target"][1], "control": scored("control", "control")}
        plan = plan_rows(batch, self.specs, patching.directions, patching.control, model.dims.n_audio_ctx, words)

        mels = {}  # clip -> its log-mel; for a CTC model (its input values, its length in samples)
        for side in ("source", "target", "control"):
            lengths = batch[side].samples.tolist() if self.ctc else batch[side].clip.tolist()
            for clip, mel, samples in zip(batch[side].clip.tolist(), batch[side].mel, lengths):
                mels.setdefault(clip, (mel, samples) if self.ctc else mel)
        clean_clips = {clip for side in ("source", "target") for clip in batch[side].clip.tolist()}
        runs = [row.run for row in plan]
        clean_clips |= {
            clip for run in runs for clip in (run.recipient_clip, run.donor_clip)
        }  # decoder sites read them
        encoder_runs = [run for run in runs if not SITES[run.patch.site].in_decoder]
        if self.ctc:
            outputs = ctc.encode_plan(model, mels, encoder_runs, clean_clips)
        else:
            outputs = encode_plan(model.encoder, mels, encoder_runs, clean_clips)
        decodings = decoding_plan(outputs, runs)

        asked = words_to_score(plan, decodings, batch, read)
        if self.ctc:
            decoded = ctc.decode(model, outputs, decodings, asked)
        else:
            crosses_languages = batch["source"].lang != batch["target"].lang
            detect = model.is_multilingual and (readout.language is None or crosses_languages)
            decoded = decode_plan(model, outputs.features, decodings, asked, self.tokenizer, readout, detect)

        rows = result_rows(batch, plan, decodings, decoded, read, readout.min_separation)
        rows = [row.to_dict() for row in rows]
        self.heard = {  # the batch's clean transcripts, for the run folder (`wpatch.run_folder.clips`)
            int(item): [decoded.transcripts[decodings.clean[int(batch[side].clip[b])]] for side in ("source", "target")]
            for b, item in enumerate(batch["item_id"].tolist())
        }
        if self.attribution.method == "patch":
            return rows
        with record_function("wpatch.attribution"):
            found = attribution_map(model, batch, read, patching.directions, readout.min_separation, self.attribution)
        return {"rows": rows, "attributions": found}
