"""The LightningModule whose predict step patches every (source layer, target layer) pair of a batch."""

import math

import lightning as L
import torch
from torch.nn.parallel import DistributedDataParallel

from wpatch.decoding import greedy_transcripts, language_probs, scoring_prefix, word_logprobs
from wpatch.errors import WpatchError
from wpatch.models import load_model
from wpatch.patching import block_outputs, layer_pairs, patched_outputs
from wpatch.text import normalise, tokenizer_for

ROW_COLUMNS = [
    "item_id", "pair_id", "direction", "category", "voice", "source_word", "target_word", "source_layer", "target_layer",
    "transcript", "override", "retained", "transfer", "logp_source", "logp_target", "score", "p_source_language",
    "source_recognised",
]


def check_precision(precision: str, on_gpu: bool) -> None:
    """Refuse a precision the chosen accelerator cannot run Whisper under (Lightning would swap it silently)."""
    precision = str(precision)
    if not on_gpu and precision not in ("32-true", "32", "bf16-mixed"):
        raise WpatchError(f"precision {precision} is not supported on the CPU; use --trainer.precision 32-true (or bf16-mixed)")
    if on_gpu and precision.startswith("bf16") and not torch.cuda.is_bf16_supported():
        raise WpatchError(f"precision {precision} needs a GPU with bfloat16 support; use --trainer.precision 16-mixed")


def graded_score(logp_source: float, logp_target: float) -> float:
    """p_source / (p_source + p_target), computed stably from the two log-probabilities."""
    gap = logp_target - logp_source
    return 1.0 / (1.0 + math.exp(gap)) if gap <= 0 else math.exp(-gap) / (1.0 + math.exp(-gap))


class PatchingModule(L.LightningModule):
    """Whole-block encoder patching of Whisper over all layer pairs, with greedy and teacher-forced measures.

    Args:
        model: model spec (see `wpatch.models.load_model`).
        source_layers: encoder blocks whose output is taken from the source clip (default: all).
        target_layers: encoder blocks whose output is replaced (default: all).
        language: decoding language (e.g. en); None lets Whisper detect it (multilingual models).
        task: transcribe or translate.
        max_tokens: greedy decoding stops after this many tokens (single words need few).
    """

    def __init__(
        self,
        model: str = "tiny.en",
        source_layers: list[int] | None = None,
        target_layers: list[int] | None = None,
        language: str | None = "en",
        task: str = "transcribe",
        max_tokens: int = 8,
    ):
        super().__init__()
        self.save_hyperparameters()
        self.whisper = load_model(model)
        self.pairs = layer_pairs(self.whisper.dims.n_audio_layer, source_layers, target_layers)
        self.tokenizer = tokenizer_for(self.whisper.dims, language or "en", task)
        # a sparse, non-persistent buffer (used only for word timestamps) that DDP cannot broadcast
        DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(self, ["whisper.alignment_heads"])

    def prefix(self, lang: str) -> tuple[int, ...]:
        """The forced transcript start for scoring a word of language `lang` (the run's language if it has one)."""
        return scoring_prefix(tokenizer_for(self.whisper.dims, self.hparams.language or lang, self.hparams.task))

    def predict_step(self, batch: dict, batch_idx: int = 0) -> list[dict]:
        """One row per item and layer pair (columns `ROW_COLUMNS`)."""
        first, inverse = _unique(batch["source_clip"])
        states, clean = block_outputs(self.whisper.encoder, batch["source_mel"][first])
        features, slot = patched_outputs(self.whisper.encoder, states, clean, self.pairs)
        n_slots = features.shape[1]
        features = features.flatten(0, 1)  # feature f = clip * n_slots + slot; slot 0 is the clean run
        transcripts = greedy_transcripts(self.whisper, features, self.hparams.language, self.hparams.task, self.hparams.max_tokens)

        # the words each feature is scored on: the source word and every target word of rows that use it
        source_words = [(self.prefix(lang), tuple(map(tuple, forms))) for lang, forms in zip(batch["source_lang"], batch["source_tokens"])]
        target_words = [(self.prefix(lang), tuple(map(tuple, forms))) for lang, forms in zip(batch["target_lang"], batch["target_tokens"])]
        asked = [{} for _ in range(len(features))]
        for b, c in enumerate(inverse.tolist()):
            for k in range(n_slots):
                asked[c * n_slots + k].update(dict.fromkeys((source_words[b], target_words[b])))
        logp = word_logprobs(self.whisper, features, [list(words) for words in asked])
        crosses_languages = any(a != b for a, b in zip(batch["source_lang"], batch["target_lang"]))
        lang_probs = language_probs(self.whisper, features, self.tokenizer) if self.whisper.is_multilingual and crosses_languages else None

        rows = []
        for b, c in enumerate(inverse.tolist()):
            source, target = normalise(batch["source_word"][b]), normalise(batch["target_word"][b])
            source_lang, target_lang = batch["source_lang"][b], batch["target_lang"][b]
            for s, t in self.pairs:
                f = c * n_slots + slot[(s, t)]
                text = normalise(transcripts[f])
                lp_s, lp_t = logp[f][source_words[b]], logp[f][target_words[b]]
                p_lang = float("nan")
                if lang_probs is not None and source_lang != target_lang:
                    p_src, p_tgt = lang_probs[f].get(source_lang, 0.0), lang_probs[f].get(target_lang, 0.0)
                    p_lang = p_src / (p_src + p_tgt) if p_src + p_tgt > 0 else float("nan")
                rows.append({
                    "item_id": int(batch["item_id"][b]), "pair_id": batch["pair_id"][b], "direction": batch["direction"][b],
                    "category": batch["category"][b], "voice": batch["voice"][b], "source_word": batch["source_word"][b], "target_word": batch["target_word"][b],
                    "source_layer": s, "target_layer": t, "transcript": transcripts[f].strip(),
                    "override": text == source, "retained": text == target, "transfer": f" {source} " in f" {text} ",
                    "logp_source": lp_s, "logp_target": lp_t, "score": graded_score(lp_s, lp_t),
                    "p_source_language": p_lang, "source_recognised": normalise(transcripts[c * n_slots]) == source,
                })
        return rows


def _unique(clips: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The batch position of each distinct clip's first occurrence, and each position's distinct-clip index."""
    unique, inverse = torch.unique(clips, return_inverse=True)
    first = torch.full((len(unique),), len(clips), dtype=torch.long, device=clips.device)
    first = first.scatter_reduce(0, inverse, torch.arange(len(clips), device=clips.device), reduce="amin")
    return first, inverse
