"""The log-mel disk cache gives exactly the log-mels computed directly, keyed by the clip's content and n_mels."""

import numpy as np
import soundfile
import torch

from datamodules import PairDataModule
from wpatch.stimuli.audio import load_audio, log_mel
from wpatch.stimuli.melcache import MelStore

RATE = 16000


def tone(path, freq: float, seconds: float = 0.5):
    soundfile.write(path, 0.3 * np.sin(2 * np.pi * freq * np.arange(int(RATE * seconds)) / RATE), RATE)
    return path


def test_cached_log_mels_equal_direct_ones_and_are_read_back(tmp_path):
    paths = [tone(tmp_path / "a.wav", 300), tone(tmp_path / "b.wav", 700, 0.3)]
    store = MelStore(tmp_path / "mels")
    table, spans = store.table(paths, 80, 1500)
    assert store.computed == 2 and table.shape == (2, 80, 3000) and spans.shape == (2, 2)
    direct = torch.stack([log_mel(load_audio(p), 80) for p in paths])
    assert (
        torch.equal(table[[0, 1]], direct)
        and torch.equal(table[1], direct[1])
        and torch.equal(table[torch.tensor([1, 0])], direct[[1, 0]])
    )
    assert torch.equal(table[1:], direct[1:]) and torch.equal(torch.stack(list(table)), direct)
    again = MelStore(tmp_path / "mels")  # a rerun, or another rank
    assert torch.equal(again.table(paths, 80, 1500)[0][[0, 1]], direct) and again.computed == 0
    assert again.table(paths, 128, 1500)[0][0].shape == (128, 3000) and again.computed == 2  # n_mels is part of the key
    assert not list((tmp_path / "mels").rglob(".*partial"))


def test_a_changed_clip_gets_a_new_log_mel(tmp_path):
    path = tone(tmp_path / "a.wav", 300)
    store = MelStore(tmp_path / "mels")
    first = store.table([path], 80, 1500)[0][0]
    tone(path, 900)  # same path, other audio: the key is the content, not the name
    second = store.table([path], 80, 1500)[0][0]
    assert store.computed == 2 and torch.equal(second, log_mel(load_audio(path), 80)) and not torch.equal(first, second)


def test_datamodule_batches_read_the_cache(tmp_path, small_model_path, monkeypatch):
    monkeypatch.setenv("WPATCH_CACHE", str(tmp_path / "cache"))
    tone(tmp_path / "a.wav", 300)
    tone(tmp_path / "b.wav", 700)
    csv = tmp_path / "pairs.csv"
    csv.write_text("word_a,word_b,audio_a,audio_b\nfoo,bar,a.wav,b.wav\n")
    dm = PairDataModule(pairs_file=str(csv), model=small_model_path)
    dm.setup()
    batch = next(iter(dm.predict_dataloader()))
    assert dm.mel_store.computed == 2 and all(f.is_file() for f in dm.mels.files)
    assert torch.equal(batch["source"].mel[0], log_mel(load_audio(tmp_path / "a.wav"), 80))
    rerun = PairDataModule(pairs_file=str(csv), model=small_model_path)
    rerun.setup()
    assert rerun.mel_store.computed == 0 and torch.equal(
        next(iter(rerun.predict_dataloader()))["source"].mel, batch["source"].mel
    )
