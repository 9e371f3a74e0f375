"""Audio files to 16 kHz mono float32, and the per-clip log-mel spectrogram Whisper reads."""

from pathlib import Path

import numpy as np
import soundfile
import torch
import torchaudio.functional
import whisper

from wpatch.errors import WpatchError

SAMPLE_RATE = whisper.audio.SAMPLE_RATE  # 16 kHz


def resample(samples: np.ndarray, rate: int) -> np.ndarray:
    """Mono float32 samples at `rate` Hz resampled to 16 kHz with torchaudio."""
    samples = np.asarray(samples, dtype=np.float32)
    if rate == SAMPLE_RATE:
        return samples
    return torchaudio.functional.resample(torch.from_numpy(samples), rate, SAMPLE_RATE).numpy()


def load_audio(path: str | Path) -> np.ndarray:
    """Any audio file soundfile reads (wav, flac, mp3, ogg) as 16 kHz mono float32 in [-1, 1]."""
    path = Path(path)
    if path.is_dir():
        raise WpatchError(f"audio file {path} is a directory, not an audio file; give the recording's own path")
    if not path.is_file():
        raise WpatchError(f"audio file {path} does not exist; fix the path in the pairs file")
    try:
        samples, rate = soundfile.read(str(path), dtype="float32", always_2d=True)
    except Exception as error:
        raise WpatchError(f"audio file {path} cannot be read ({error}); convert it to wav, flac or mp3") from None
    if samples.shape[0] == 0:
        raise WpatchError(f"audio file {path} holds no samples; record it again")
    return resample(samples.mean(axis=1), rate)


def log_mel(audio: np.ndarray, n_mels: int) -> torch.Tensor:
    """Whisper's (n_mels, 3000) log-mel of one clip padded to 30 s, computed alone so no other clip sets its clamp."""
    padded = whisper.pad_or_trim(torch.from_numpy(np.asarray(audio, dtype=np.float32)))
    return whisper.log_mel_spectrogram(padded, n_mels=n_mels)


FRAME = 320  # samples per encoder position (20 ms)


def speech_span(audio: np.ndarray, threshold_db: float = -30.0, pad: int = 1, n_ctx: int = 1500) -> tuple[int, int]:
    """Encoder frames [start, end) where the clip is spoken: 20 ms frames whose RMS is within `threshold_db`
    of the loudest frame, padded by `pad` frames each side (the word's frames for patching)."""
    n = max(1, len(audio) // FRAME)
    rms = np.sqrt(np.mean(np.asarray(audio[: n * FRAME], dtype=np.float64).reshape(n, -1) ** 2, axis=1) + 1e-20)
    active = np.flatnonzero(20 * np.log10(rms / rms.max()) > threshold_db)
    return max(0, int(active[0]) - pad), min(n_ctx, int(active[-1]) + 1 + pad)


# A clip has no speech when it is shorter than any spoken word (a single phone lasts longer than 50 ms) or when
# its loudest 20 ms frame is quieter than -60 dBFS (RMS relative to full scale 1.0): below the noise of a quiet
# room's recording and 30 dB or more under a word spoken at any usable level.
MIN_SPEECH_SECONDS = 0.05
SILENCE_DBFS = -60.0


def no_speech(audio: np.ndarray) -> str | None:
    """Why a 16 kHz clip holds no speech (too short, or too quiet: see the thresholds above), or None if it may."""
    seconds = len(audio) / SAMPLE_RATE
    if seconds < MIN_SPEECH_SECONDS:
        return f"is {seconds:.3f} s long, under {MIN_SPEECH_SECONDS} s"
    n = len(audio) // FRAME
    frames = np.asarray(audio[: n * FRAME], dtype=np.float64).reshape(n, FRAME)
    loudest = 20 * np.log10(max(float(np.sqrt(np.mean(frames**2, axis=1)).max()), 1e-6))  # floor: -120 dBFS
    if loudest < SILENCE_DBFS:
        return f"is silent (its loudest 20 ms is at {loudest:.0f} dBFS, below {SILENCE_DBFS:.0f} dBFS)"
    return None
