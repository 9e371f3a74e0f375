"""Randomly initialised CTC models of the wav2vec2 family, built with transformers and saved with save_pretrained
(with a character tokenizer and a feature extractor), as a user's fine-tune folder is.

    python -m tests.ctc_models wav2vec2 base FOLDER   # a random model of wav2vec2-base's shape
"""

import json
import sys
from pathlib import Path

import safetensors.torch
import torch
import transformers

LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ'"
VOCAB = {"<pad>": 0, "<s>": 1, "</s>": 2, "<unk>": 3, "|": 4, **{ch: 5 + i for i, ch in enumerate(LETTERS)}}
SMALL = dict(hidden_size=32, num_hidden_layers=3, num_attention_heads=4, intermediate_size=64,
             conv_dim=(16,) * 7, num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=4)  # fmt: skip
BASE = dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072)  # wav2vec2-base
CONFIGS = {"wav2vec2": "Wav2Vec2Config", "hubert": "HubertConfig", "wavlm": "WavLMConfig"}
MODELS = {"wav2vec2": "Wav2Vec2ForCTC", "hubert": "HubertForCTC", "wavlm": "WavLMForCTC"}


def save_ctc_model(kind: str, folder: Path, shape: str = "small", stable: bool = False, seed: int = 0) -> Path:
    """A random `kind` (wav2vec2, hubert, wavlm) CTC model in `folder`: `stable` gives the large models' layout
    (pre-norm layers, layer-norm feature encoder, a feature extractor that returns an attention mask), else the
    base models' (post-norm, group norm, no mask)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    config = getattr(transformers, CONFIGS[kind])(
        **(SMALL if shape == "small" else BASE),
        vocab_size=len(VOCAB),
        pad_token_id=VOCAB["<pad>"],
        do_stable_layer_norm=stable,
        feat_extract_norm="layer" if stable else "group",
    )
    torch.manual_seed(seed)
    model = getattr(transformers, MODELS[kind])(config).eval()
    with torch.no_grad():  # random heads would barely move the blank; spread the logits so transcripts vary
        model.lm_head.weight.mul_(8.0)
    model.save_pretrained(folder)
    (folder / "vocab.json").write_text(json.dumps(VOCAB))
    tokenizer = transformers.Wav2Vec2CTCTokenizer(str(folder / "vocab.json"), word_delimiter_token="|")
    extractor = transformers.Wav2Vec2FeatureExtractor(do_normalize=True, return_attention_mask=stable)
    transformers.Wav2Vec2Processor(feature_extractor=extractor, tokenizer=tokenizer).save_pretrained(folder)
    return folder


def save_mms_model(folder: Path, languages: tuple[str, ...] = ("eng", "fra"), seed: int = 0) -> Path:
    """A random MMS-style `Wav2Vec2ForCTC` in `folder`: attention adapters in every layer, and per language its own
    adapter file (`adapter.<lang>.safetensors`: adapters and output head) and vocabulary (`vocab.json` nested by
    language; each language after the first has one letter more, so its head is larger)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    config = transformers.Wav2Vec2Config(
        **SMALL, vocab_size=len(VOCAB), pad_token_id=VOCAB["<pad>"], do_stable_layer_norm=True,
        feat_extract_norm="layer", adapter_attn_dim=8,
    )  # fmt: skip
    torch.manual_seed(seed)
    model = transformers.Wav2Vec2ForCTC(config).eval()
    model.save_pretrained(folder)
    vocabs = {lang: VOCAB | ({"É": len(VOCAB)} if i else {}) for i, lang in enumerate(languages)}
    for lang, vocab in vocabs.items():
        weights = {name: torch.randn_like(p) * 0.3 for name, p in model._get_adapters().items()}
        weights["lm_head.weight"] = torch.randn(len(vocab), config.hidden_size)
        weights["lm_head.bias"] = torch.zeros(len(vocab))
        safetensors.torch.save_file(weights, folder / f"adapter.{lang}.safetensors")
    (folder / "vocab.json").write_text(json.dumps(vocabs))
    tokenizer = transformers.Wav2Vec2CTCTokenizer(
        str(folder / "vocab.json"), word_delimiter_token="|", target_lang=languages[0]
    )
    extractor = transformers.Wav2Vec2FeatureExtractor(do_normalize=True, return_attention_mask=True)
    transformers.Wav2Vec2Processor(feature_extractor=extractor, tokenizer=tokenizer).save_pretrained(folder)
    return folder


if __name__ == "__main__":
    print(save_ctc_model(sys.argv[1], Path(sys.argv[3]), sys.argv[2]))
