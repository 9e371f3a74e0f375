import dataclasses
import logging
import re
import types

import numpy as np
import pytest
import soundfile
import torch

from datamodules import PairDataModule
from tests.conftest import SMALL_DIMS, random_whisper, save_checkpoint
from wpatch.errors import WpatchError
from wpatch.stimuli import clip_progress
from wpatch.stimuli.pairs_file import read_pairs, silent_clips


def write_csv(path, text):
    path.write_text(text)
    return str(path)


def test_starter_set_covers_the_three_kinds():
    pairs = read_pairs()
    counts = pairs["category"].value_counts()
    assert len(pairs) >= 60 and set(counts.index) == {"consonant", "vowel", "semantic"} and counts.min() >= 15
    assert not pairs[["word_a", "word_b"]].duplicated().any() and (pairs["word_a"] != pairs["word_b"]).all()


@pytest.mark.parametrize(
    "text, message",
    [
        ("word_a,category\nbat,x\n", "lacks column 'word_b'"),
        ("word_a,word_b\nbat,pat\ncat,\n", "line 3: empty word_b"),
        ("word_a,word_b,audio_a\nbat,pat,missing.wav\n", "line 2: audio_a .*missing.wav does not exist"),
        ("word_a,word_b\n", "has no rows"),
        ("word_a,word_b,audio_b\nbat,pat,.\n", "line 2: audio_b .* is a directory, not an audio file"),
    ],
)
def test_bad_pairs_files_name_the_problem(tmp_path, text, message):
    with pytest.raises(WpatchError, match=message):
        read_pairs(write_csv(tmp_path / "pairs.csv", text))


def test_serves_log_mel_pairs_both_ways_and_caches_clips(tmp_path, small_model_path):
    csv = write_csv(
        tmp_path / "pairs.csv", "word_a,word_b,category\nbat,pat,consonant\nhot,cold,semantic\nbig,pig,consonant\n"
    )
    dm = PairDataModule(pairs_file=csv, model=small_model_path, cache_dir=str(tmp_path / "clips"), batch_size=4)
    dm.prepare_data()
    assert dm.clips["hibari"].synthesized == 6
    dm.setup("predict")
    batches = list(dm.predict_dataloader())
    assert [len(b["item_id"]) for b in batches] == [4, 2]
    batch = batches[0]
    source, target = batch["source"], batch["target"]
    assert source.mel.shape == (4, 80, 3000) and source.mel.dtype == torch.float32
    assert dm.items["direction"][:4].tolist() == ["a->b", "b->a", "a->b", "b->a"]
    assert source.word[:2] == ["bat", "pat"] and target.word[:2] == ["pat", "bat"]
    # the two directions swap the same two clips
    assert torch.equal(source.mel[0], target.mel[1]) and torch.equal(target.mel[0], source.mel[1])
    assert source.tokens[0] == target.tokens[1] and len(source.tokens[0]["word"]) == 2  # " bat", " Bat"
    one_way = PairDataModule(
        pairs_file=csv, model=small_model_path, cache_dir=str(tmp_path / "clips"), bidirectional=False
    )
    one_way.prepare_data()
    one_way.setup()
    assert one_way.clips["hibari"].synthesized == 0  # every clip came from the cache
    assert len(one_way.items) == 3 and set(one_way.items["direction"]) == {"a->b"}


def test_a_negative_worker_count_is_bad_input():
    """Refused as bad input when the DataModule is made, not as the DataLoader's ValueError once the run started."""
    with pytest.raises(WpatchError, match="num_workers -1 is negative"):
        PairDataModule(num_workers=-1)


def test_n_mels_follows_the_model(tmp_path):
    model_128 = save_checkpoint(random_whisper(dataclasses.replace(SMALL_DIMS, n_mels=128)), tmp_path / "m128.pt")
    csv = write_csv(tmp_path / "pairs.csv", "word_a,word_b\nsun,moon\n")
    dm = PairDataModule(pairs_file=csv, model=model_128, cache_dir=str(tmp_path / "clips"))
    dm.setup()
    assert next(iter(dm.predict_dataloader()))["source"].mel.shape == (2, 128, 3000)


def test_recordings_are_used_instead_of_synthesis(tmp_path, small_model_path):
    rate = 16000
    for name, freq in (("a.wav", 300), ("b.flac", 600)):
        soundfile.write(tmp_path / name, 0.3 * np.sin(2 * np.pi * freq * np.arange(rate // 2) / rate), rate)
    csv = write_csv(tmp_path / "pairs.csv", "word_a,word_b,audio_a,audio_b\nfoo,bar,a.wav,b.flac\n")
    dm = PairDataModule(pairs_file=csv, model=small_model_path, cache_dir=str(tmp_path / "clips"))
    dm.prepare_data()
    dm.setup()
    assert dm.clips["hibari"].synthesized == 0 and not (tmp_path / "clips").exists()
    assert dm.mels.shape == (2, 80, 3000) and not torch.equal(dm.mels[0], dm.mels[1])


def test_items_sharing_a_source_clip_come_in_one_batch(tmp_path, small_model_path):
    csv = write_csv(tmp_path / "pairs.csv", "word_a,word_b\nbat,pat\ncat,hat\nbat,cat\n")
    dm = PairDataModule(pairs_file=csv, model=small_model_path, cache_dir=str(tmp_path / "clips"), batch_size=1)
    dm.setup()
    batches = list(dm.predict_dataloader())
    sources = [b["source"].word for b in batches]
    assert sources == [["bat", "bat"], ["pat"], ["cat", "cat"], ["hat"]]
    assert sorted(i for b in batches for i in b["item_id"].tolist()) == list(range(6))
    dm.skip({0, 4, 5})  # a resumed run: bat's items done, one of cat's
    assert [b["item_id"].tolist() for b in dm.predict_dataloader()] == [[1], [2], [3]]


def test_clips_without_speech_are_told_with_the_line_that_uses_them(tmp_path, caplog):
    soundfile.write(tmp_path / "quiet.wav", np.zeros(8000, np.float32), 16000)
    csv = write_csv(tmp_path / "pairs.csv", "word_a,word_b,audio_b\nbat,pat,\nhum,bat,quiet.wav\n")
    quiet = str(tmp_path / "quiet.wav")
    clips = [
        ("bat", "en", "", "hibari", "", "", "clips/bat.wav"),
        ("hum", "en", "", "hibari", "", "", "clips/hum.wav"),
        ("bat", "en", quiet, "", "", "", quiet),
    ]
    with caplog.at_level("WARNING"):
        found = silent_clips(read_pairs(csv), csv, clips, [None, "is 0.020 s long, under 0.05 s", "is silent"])
    assert [(c["line"], c["column"], c["file"]) for c in found] == [
        (3, "word_a", "clips/hum.wav"),
        (3, "audio_b", quiet),
    ]
    assert caplog.messages[0].startswith(
        f"wpatch: warning: pairs file {csv} line 3: word_a 'hum' spoken by hibari (clips/hum.wav) has no"
    )
    assert caplog.messages[1].startswith(
        f"wpatch: warning: pairs file {csv} line 3: audio_b {quiet} has no speech: it is silent;"
    )


def test_a_resume_with_fewer_clips_left_than_processes_gives_every_process_a_batch(tmp_path, small_model_path):
    """Each process must get a batch (one without would skip the run's end, where the others wait for it): a
    process left without source clips gets an empty one."""
    csv = write_csv(tmp_path / "pairs.csv", "word_a,word_b\nbat,pat\n")
    dm = PairDataModule(pairs_file=csv, model=small_model_path, cache_dir=str(tmp_path / "clips"), batch_size=1)
    dm.setup()
    dm.trainer = types.SimpleNamespace(world_size=3)
    assert [b["item_id"].tolist() for b in dm.predict_dataloader()] == [[0], [1], []]  # two source clips
    dm.skip({0})
    loader = dm.predict_dataloader()
    assert len(loader) == 3 and [b["item_id"].tolist() for b in loader] == [[1], [], []]
    empty = list(loader)[1]
    assert empty["source"].mel.shape[0] == 0 and empty["source"].word == [] and empty["source"].tokens == []
    dm.skip({0, 1})
    assert len(dm.predict_dataloader()) == 0  # nothing left: no batch at all


def test_a_run_reads_its_pairs_file_once(tmp_path, small_model_path, monkeypatch):
    """The command's checks, the DataModule's clips and items, and the analysis share one read of the pairs file
    (what the analysis needs of it is kept in the run's folder); a DataModule on its own reads it once too."""
    import wpatch.stimuli.pairs_file as pairs_file
    from tests.predict_run import main, predict_args

    reads = []
    read = pairs_file.csv_cells
    monkeypatch.setattr(pairs_file, "csv_cells", lambda path: reads.append(path) or read(path))
    main(predict_args(tmp_path, small_model_path, pairs="word_a,word_b\nbat,pat\nhot,cold\n"))
    assert reads == [tmp_path / "pairs.csv"]
    reads.clear()
    dm = PairDataModule(
        pairs_file=str(tmp_path / "pairs.csv"), model=small_model_path, cache_dir=str(tmp_path / "clips")
    )
    dm.prepare_data()
    dm.setup("predict")
    assert reads == [tmp_path / "pairs.csv"]


def test_making_clips_tells_how_far_it_is(tmp_path, small_model_path, monkeypatch, caplog):
    monkeypatch.setattr(clip_progress, "EVERY_S", 0.0)  # a line before every clip but the first
    csv = write_csv(tmp_path / "pairs.csv", "word_a,word_b\nbat,pat\nhot,cold\n")
    dm = PairDataModule(pairs_file=csv, model=small_model_path, cache_dir=str(tmp_path / "clips"))
    with caplog.at_level(logging.INFO):
        dm.prepare_data()
    lines = [r.getMessage() for r in caplog.records if r.name == clip_progress.__name__]
    assert [line.split(" (")[0] for line in lines] == ["clips: 1 of 4", "clips: 2 of 4", "clips: 3 of 4"]
    assert all(re.search(r"\(\d+ s; about \d+ s left\)$", line) for line in lines), lines
