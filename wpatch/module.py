"""The LightningModule whose predict step patches every (source layer, target layer) pair of a batch."""

import math

import lightning as L
import torch
from torch.nn.parallel import DistributedDataParallel

from wpatch.decoding import greedy_transcripts, scoring_prefix, word_logprobs
from wpatch.errors import WpatchError
from wpatch.models import load_model
from wpatch.patching import block_outputs, layer_pairs, patched_outputs
from wpatch.text import normalise, tokenizer_for

ROW_COLUMNS = [
    "item_id", "pair_id", "direction", "category", "source_word", "target_word", "source_layer", "target_layer",
    "transcript", "override", "retained", "logp_source", "logp_target", "score",
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

    def predict_step(self, batch: dict, batch_idx: int = 0) -> list[dict]:
        """One row per item and layer pair (columns `ROW_COLUMNS`)."""
        first, inverse = _unique(batch["source_clip"])
        states, clean = block_outputs(self.whisper.encoder, batch["source_mel"][first])
        features, slot = patched_outputs(self.whisper.encoder, states, clean, self.pairs)
        n_slots = features.shape[1]
        features = features.flatten(0, 1)  # feature f = clip * n_slots + slot
        transcripts = greedy_transcripts(self.whisper, features, self.hparams.language, self.hparams.task, self.hparams.max_tokens)

        # the words each feature is scored on: the source word and every target word of rows that use it
        source_words = [tuple(map(tuple, forms)) for forms in batch["source_tokens"]]
        target_words = [tuple(map(tuple, forms)) for forms in batch["target_tokens"]]
        asked = [{} for _ in range(len(features))]
        for b, c in enumerate(inverse.tolist()):
            for k in range(n_slots):
                asked[c * n_slots + k].update(dict.fromkeys((source_words[b], target_words[b])))
        logp = word_logprobs(self.whisper, features, [list(words) for words in asked], scoring_prefix(self.tokenizer))

        rows = []
        for b, c in enumerate(inverse.tolist()):
            for s, t in self.pairs:
                f = c * n_slots + slot[(s, t)]
                text = normalise(transcripts[f])
                lp_s, lp_t = logp[f][source_words[b]], logp[f][target_words[b]]
                rows.append({
                    "item_id": int(batch["item_id"][b]), "pair_id": batch["pair_id"][b], "direction": batch["direction"][b],
                    "category": batch["category"][b], "source_word": batch["source_word"][b], "target_word": batch["target_word"][b],
                    "source_layer": s, "target_layer": t, "transcript": transcripts[f].strip(),
                    "override": text == normalise(batch["source_word"][b]), "retained": text == normalise(batch["target_word"][b]),
                    "logp_source": lp_s, "logp_target": lp_t, "score": graded_score(lp_s, lp_t),
                })
        return rows


def _unique(clips: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The batch position of each distinct clip's first occurrence, and each position's distinct-clip index."""
    unique, inverse = torch.unique(clips, return_inverse=True)
    first = torch.full((len(unique),), len(clips), dtype=torch.long, device=clips.device)
    first = first.scatter_reduce(0, inverse, torch.arange(len(clips), device=clips.device), reduce="amin")
    return first, inverse
