"""The wav2vec2 family: CTC speech encoders (`Wav2Vec2ForCTC`, `HubertForCTC`, `WavLMForCTC`; MMS and XLS-R
fine-tunes are `Wav2Vec2ForCTC`) run by transformers, patched and read out the way Whisper's encoder is
(`wpatch.patching.ctc`).

A model is a `save_pretrained` folder (config.json, the weights, vocab.json and preprocessor_config.json) or a
hub id in the local Hugging Face cache (`wpatch.models.loading.locate`). Its encoder layers are the blocks the
encoder sites index (`resid_pre`, `attn_out`, `mlp_out`, `block_out`), on its 20 ms frames (a 320-sample stride at
16 kHz, Whisper's frame rate); `cnn_out`, the family's own site, is the convolutional feature encoder's output on
the same frames, before its projection, the positional convolution and layer 0 (its one layer: 0; block 0's
`resid_pre` comes after them).

Length: every clip of a run is padded with the feature extractor's padding value (silence) to the run's longest
clip (at most 30 s: 1500 frames, as Whisper), so donor and recipient have the same frames and each clip has one
clean run, shared by all its pairs. A model whose feature extractor returns an attention mask (large, XLS-R,
MMS, most WavLM) reads each run with its recipient's mask: the frames past the recipient's end are masked, never
read, and the readout is over the recipient's own frames; such a clip's clean run is its run alone. A model
without one (wav2vec2-base and HuBERT-base fine-tunes) reads every frame, the silence after the clip too, as
transformers' batched inference does; its numbers then depend on the run's longest clip (compare runs made from
the same pairs).
"""

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from wpatch.errors import WpatchError
from wpatch.sites import SITES, Hook
from wpatch.text import ScoredWord, surface_forms

MODEL_TYPES = {"wav2vec2": "Wav2Vec2ForCTC", "hubert": "HubertForCTC", "wavlm": "WavLMForCTC"}
FAMILY_NAMES = {"wav2vec2": "wav2vec2", "hubert": "HuBERT", "wavlm": "WavLM"}
N_CTX = 1500  # frames of the longest clip a run takes (30 s, as Whisper)
SUBMODULE = {Hook.ATTN: "attention", Hook.MLP: "feed_forward"}  # an encoder layer's part each hook kind reads
ISO_639_3 = {"en": "eng", "es": "spa", "fr": "fra", "de": "deu", "it": "ita", "pt": "por", "nl": "nld", "ja": "jpn"}


def model_type(directory: Path) -> str | None:
    """The folder's `model_type` if it is one of the family's, else None."""
    try:
        config = json.loads((Path(directory) / "config.json").read_text())
    except (OSError, ValueError):
        return None
    kind = config.get("model_type") if isinstance(config, dict) else None
    return kind if kind in MODEL_TYPES else None


@dataclass(frozen=True)
class CTCDims:
    """What a run needs to know of a CTC model before it loads: its depth, its labels and its input."""

    model_type: str
    n_audio_layer: int
    n_audio_state: int  # the encoder's width
    labels: tuple[str, ...]  # label of each output id
    blank: int  # the CTC blank (the tokenizer's pad token)
    delimiter: str  # the label between words
    upper: bool  # the labels are upper-case letters
    uses_mask: bool  # the feature extractor returns an attention mask
    normalise: bool  # each clip is scaled to zero mean, unit variance
    padding: float  # the input value a clip is padded with
    languages: tuple[str, ...]  # MMS: the languages with an adapter (and a vocabulary); () otherwise
    n_audio_ctx: int = N_CTX
    n_text_layer: int = 0  # no decoder
    n_text_state: int = 0

    def label_ids(self, text: str) -> tuple[int, ...] | None:
        """The label ids that spell `text` (words joined by the delimiter), or None if a character has none."""
        index = {label: i for i, label in enumerate(self.labels)}
        text = text.upper() if self.upper else text.lower()
        ids = [index.get(ch) for ch in self.delimiter.join(text.split())]
        return None if None in ids else tuple(ids)

    def spelled(self, word: str, carrier: str = "") -> ScoredWord:
        """The word as it is scored: each surface form's label ids, in its carrier text (`{}` for the word)."""
        texts = [carrier.replace("{}", form) if carrier else form for form in surface_forms(word)]
        forms = list(dict.fromkeys(self.label_ids(text) for text in texts))  # forms the labels tell apart
        if None in forms or not all(forms):
            raise WpatchError(
                f"word {word!r}{f' in {carrier!r}' if carrier else ''} has characters the model's vocabulary "
                f"lacks (it spells {''.join(self.labels[4:])[:60]!r}); give words in the model's alphabet"
            )
        return ScoredWord((), tuple(forms))


def _json(path: Path, default: dict) -> dict:
    if not path.exists():
        return default
    try:
        value = json.loads(path.read_text())
    except ValueError as error:
        raise WpatchError(f"{path}: not JSON ({error}); save the folder again with save_pretrained") from None
    if not isinstance(value, dict):
        raise WpatchError(f"{path}: not a JSON object; save the folder again with save_pretrained")
    return value


def language_key(language: str | None, languages: tuple[str, ...], where: Path) -> str:
    """The MMS adapter for `language` (an ISO 639-3 code, or a two-letter one wpatch maps)."""
    key = ISO_639_3.get(language, language)
    if key not in languages:
        raise WpatchError(
            f"model {where}: no adapter for language {language!r}; give --model.language one of its "
            f"{len(languages)} ISO 639-3 codes ({', '.join(languages[:8])}, ...)"
        )
    return key


def read_dims(directory: Path, language: str | None = "en") -> CTCDims:
    """The model's `CTCDims`, from config.json, vocab.json (nested by language for MMS: `language`'s, or with None
    the tokenizer's `target_lang`) and preprocessor_config.json, checked; nothing is loaded."""
    directory = Path(directory)
    config = _json(directory / "config.json", {})
    vocab = _json(directory / "vocab.json", {})
    if not vocab:
        raise WpatchError(
            f"model {directory}: no vocab.json; save the processor (or tokenizer) with the model "
            "(processor.save_pretrained(folder))"
        )
    languages = tuple(sorted(k for k, v in vocab.items() if isinstance(v, dict)))
    tokens = _json(directory / "tokenizer_config.json", {})
    if languages:  # no language: the tokenizer's own (what transformers reads by default)
        vocab = vocab[language_key(language or tokens.get("target_lang") or "eng", languages, directory)]
    extractor = _json(directory / "preprocessor_config.json", {})
    labels = [""] * (max(vocab.values()) + 1)
    for label, i in vocab.items():
        labels[i] = label
    pad = tokens.get("pad_token", "<pad>")
    pad = pad.get("content") if isinstance(pad, dict) else pad
    if pad not in vocab:
        raise WpatchError(f"model {directory}: the pad token {pad!r} (the CTC blank) is not in vocab.json")
    letters = [label for label in labels if len(label) == 1 and label.isalpha()]
    if config.get("add_adapter"):
        raise WpatchError(f"model {directory}: an output adapter after the encoder (add_adapter) is not supported")
    return CTCDims(
        model_type=config["model_type"],
        n_audio_layer=int(config["num_hidden_layers"]),
        n_audio_state=int(config["hidden_size"]),
        labels=tuple(labels),
        blank=vocab[pad],
        delimiter=tokens.get("word_delimiter_token", "|"),
        upper=bool(letters) and all(ch.isupper() for ch in letters),
        uses_mask=bool(extractor.get("return_attention_mask", False)),
        normalise=bool(extractor.get("do_normalize", True)),
        padding=float(extractor.get("padding_value", 0.0)),
        languages=languages,
    )


def load_ctc(directory: Path, language: str | None = "en") -> "CTCModel":
    """The fp32 CTC model of a save_pretrained folder in eval mode; MMS with `language`'s adapter loaded."""
    import transformers

    dims = read_dims(directory, language)
    kwargs = {}
    if dims.languages:  # MMS: the language's adapter, whose head is as large as its vocabulary (transformers' way)
        kwargs = {"target_lang": language_key(language, dims.languages, directory), "ignore_mismatched_sizes": True}
    model_class = getattr(transformers, MODEL_TYPES[dims.model_type])
    hf = model_class.from_pretrained(directory, dtype=torch.float32, attn_implementation="eager", **kwargs)
    return CTCModel(hf.eval(), dims)


def input_values(audio: np.ndarray, n_samples: int, dims: CTCDims) -> Tensor:
    """A clip as transformers' feature extractor gives it in a batch padded to `n_samples` (longer clips are cut
    there, as Whisper cuts at 30 s): with `do_normalize`, scaled to zero mean and unit variance over its own samples
    and then padded (a model that reads a mask), or padded and then scaled over the whole padded array (one that
    does not)."""
    audio = np.asarray(audio, dtype=np.float32)[:n_samples]

    def scaled(x: np.ndarray) -> np.ndarray:
        return (x - x.mean()) / np.sqrt(x.var() + 1e-7) if dims.normalise else x

    def padded(x: np.ndarray) -> np.ndarray:
        return np.pad(x, (0, n_samples - len(x)), constant_values=dims.padding)

    return torch.from_numpy(padded(scaled(audio)) if dims.uses_mask else scaled(padded(audio)))


def check_words(pairs, dims: CTCDims, path) -> None:
    """Refuse, before any work, a row whose word (in its carrier or context) the model cannot spell."""
    for index, row in pairs.iterrows():
        for side in "ab":
            try:
                dims.spelled(row[f"word_{side}"], row[f"context_{side}"] or row["carrier"])
            except WpatchError as error:
                raise WpatchError(f"pairs file {path} line {index + 2}: {error}") from None


class CTCModel(torch.nn.Module):
    """A transformers CTC model (`hf`) with what patching reads of it: its layers, the state before them, the
    CTC readout."""

    def __init__(self, hf, dims: CTCDims):
        super().__init__()
        self.hf = hf
        self.dims = dims
        self.is_multilingual = True

    @property
    def base(self):
        return self.hf.base_model

    def frames(self, samples: Tensor) -> Tensor:
        """Frames (20 ms) of clips of `samples` samples."""
        return self.base._get_feat_extract_output_lengths(samples).long()

    def masks(self, lengths: Tensor, n_frames: int) -> Tensor | None:
        """(N, n_frames) frame masks of clips of `lengths` samples, or None for a model that reads no mask."""
        if not self.dims.uses_mask:
            return None
        return torch.arange(n_frames, device=lengths.device)[None] < self.frames(lengths)[:, None]

    def readout_frames(self, lengths: Tensor, n_frames: int) -> Tensor:
        """The frames each run is read out on: its recipient's own, or all of them where no mask is read."""
        return self.frames(lengths) if self.dims.uses_mask else torch.full_like(lengths, n_frames)

    def log_probs(self, hidden: Tensor) -> Tensor:
        """(N, frames, labels) label log-probabilities of the encoder's last hidden state."""
        return torch.log_softmax(self.hf.lm_head(self.hf.dropout(hidden)).float(), dim=-1)

    def layers_from(self, x: Tensor, first: int, masks: Tensor | None) -> Tensor:
        """The label log-probabilities when layer `first` reads `x` and the layers after it run (`masks`: the
        runs' frame masks, or None)."""
        encoder, wavlm = self.base.encoder, self.dims.model_type == "wavlm"
        mask = masks if masks is None or wavlm else encoder._update_full_mask(masks, x)
        bias = None
        if wavlm and first > 0:  # block 0 makes the relative position bias every later block reads
            attention, n = encoder.layers[0].attention, x.shape[1]
            bias = attention.compute_bias(n, n).unsqueeze(0).repeat(len(x), 1, 1, 1).view(-1, n, n)
        for i, layer in enumerate(encoder.layers[first:], first):
            if wavlm:  # (the post-norm layers take their index too)
                index = {} if self.hf.config.do_stable_layer_norm else {"index": i}
                x, bias = layer(x, attention_mask=mask, position_bias=bias, **index)[:2]
            else:
                x = layer(x, attention_mask=mask)[0]
        if self.hf.config.do_stable_layer_norm:
            x = encoder.layer_norm(x)
        return self.log_probs(x)

    def site_module(self, layer: int, site: str) -> torch.nn.Module:
        """The module whose output (input for `resid_pre`) a site is: for `cnn_out` the convolutional feature
        encoder, whose output is (N, channels, frames)."""
        hook = SITES[site].hook
        if hook is Hook.FEATURES:
            return self.base.feature_extractor
        module = self.base.encoder.layers[layer]
        return getattr(module, SUBMODULE[hook]) if hook in SUBMODULE else module

    def transcript(self, best: list[int]) -> str:
        """The greedy CTC transcript of the best label per frame: repeats merged, blanks dropped, delimiters as
        spaces."""
        kept = [label for i, label in enumerate(best) if label != self.dims.blank and (i == 0 or best[i - 1] != label)]
        text = "".join(self.dims.labels[label] for label in kept).replace(self.dims.delimiter, " ")
        return " ".join(text.split()).lower()
