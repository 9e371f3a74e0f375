"""Bad input gives one line that names the problem and the way out (exit 2, nothing half-written); the table of
them in docs/bad_inputs.md is made here (WPATCH_WRITE_DOCS=1 rewrites it; otherwise it must be current)."""

import dataclasses
import errno
import json
import logging
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import soundfile
import torch

from tests.conftest import SMALL_DIMS, random_whisper, save_checkpoint
from tests.ctc_models import save_ctc_model
from tests.predict_run import main, predict_args
from tests.test_huggingface_files import write_checkpoint
from wpatch import api as wpatch_api
from wpatch.analysis import read_rows
from wpatch.cli import main as wpatch
from wpatch.errors import RunInterrupted, WpatchError
from wpatch.stimuli.tts import ClipCache, make_backend
from wpatch.text import has_word, is_word

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs/bad_inputs.md"
PAIRS = "word_a,word_b\nbat,pat\nhot,cold\n"


def args(d: Path, model: str, *extra, pairs=PAIRS, out=None):
    return predict_args(d, model, out, *extra, pairs=pairs, batch_size=1, max_tokens=3)


def hold_lock(folder: Path) -> subprocess.Popen:
    """Another process holding the folder's lock, as a running run does."""
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            f"from pathlib import Path; from wpatch.run_folder.folder import claim_folder; "
            f"lock = claim_folder(Path({str(folder)!r})); print(flush=True); input()",
        ],
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    holder.stdout.readline()
    return holder


def table_row(label: str, code: int, seen: str, d: Path, model: str = "") -> str:
    """A markdown row; what differs between machines is written as a name: paths D (the probe's folder), MODEL,
    python and ., a pid N, and byte counts (a float's printed length depends on the CPU's kernels) N and M."""
    for path, name in ((str(d), "D"), (model or "MODEL", "MODEL"), (sys.executable, "python"), (str(ROOT), ".")):
        seen = seen.replace(path, name)
    seen = re.sub(r"\(pid \d+\)", "(pid N)", seen)
    seen = re.sub(r"is \d+ bytes, not the \d+", "is N bytes, not the M", seen)
    return f"| {label} | {code} | `` {seen} `` |" if "`" in seen else f"| {label} | {code} | `{seen}` |"


def test_bad_inputs_give_one_line_and_the_table_is_current(tmp_path, small_model_path, monkeypatch, capsys, caplog):
    rows = []

    def refused(label, make, code=2, env=None, at=None, expect="", command=main):
        d = at or tmp_path / f"probe{len(rows)}"
        d.mkdir(exist_ok=True)
        arguments = make(d)
        monkeypatch.setenv("WPATCH_FAULT", env or "")
        parts = sorted(d.glob("out/parts/items-*"))
        with pytest.raises(SystemExit) as exit_info:
            command(arguments)
        err = capsys.readouterr().err.strip().splitlines()
        assert exit_info.value.code == code and err[-1].startswith("wpatch: "), err
        if code == 2:
            assert len(err) == 1
            assert not (d / "out" / "predictions.csv").exists() and sorted(d.glob("out/parts/items-*")) == parts
        rows.append(table_row(label, code, err[-1], d, small_model_path))
        assert expect in rows[-1], err
        return d

    refused("`--model.alphas '[nan]'`", lambda d: args(d, small_model_path, "--model.alphas", "[nan]"))

    def hugging_face(config: dict, shards: int = 0):
        """A Hugging Face checkpoint folder: `config`, and an index of `shards` shards of which only the first is
        there (no shards: an empty model.safetensors)."""

        def make(d):
            (d / "hf").mkdir()
            (d / "hf" / "config.json").write_text(json.dumps(config))
            names = [f"model-{i + 1:05d}-of-{shards:05d}.safetensors" for i in range(shards)]
            (d / "hf" / (names[0] if names else "model.safetensors")).write_bytes(b"")
            if names:
                index = {"weight_map": {f"tensor{i}": name for i, name in enumerate(names)}}
                (d / "hf" / "model.safetensors.index.json").write_text(json.dumps(index))
            return args(d, str(d / "hf"))

        return make

    refused("a Hugging Face folder of another model (`model_type` bert)", hugging_face({"model_type": "bert"}))
    whisper_config = {
        "model_type": "whisper",
        **dict.fromkeys(["num_mel_bins", "d_model", "max_target_positions"], 80),
        "max_source_positions": 1500,
        "vocab_size": 51864,  # an English-only vocabulary: the folder is refused for its missing shard alone
        **dict.fromkeys(["encoder_layers", "decoder_layers", "encoder_attention_heads", "decoder_attention_heads"], 2),
    }
    refused("a Hugging Face folder with a shard missing", hugging_face(whisper_config, shards=2), expect="is missing")

    def offline_hub(d):
        monkeypatch.setenv("HF_HUB_CACHE", str(d / "hub"))
        monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # nothing listens there
        return args(d, "someone/whisper-tiny-finetune")

    refused("a hub id neither in the Hugging Face cache nor reachable", offline_hub, expect="unreachable")

    def offline_ctc_hub(d):
        monkeypatch.setenv("HF_HUB_CACHE", str(d / "hub"))
        monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")
        return args(d, "facebook/wav2vec2-base-960h")

    refused("a wav2vec2-family hub id neither cached nor reachable", offline_ctc_hub, expect="huggingface-cli download")

    def ctc_model(*extra, pairs=PAIRS):
        def make(d):
            return args(d, str(save_ctc_model("wav2vec2", d / "w2v")), *extra, pairs=pairs)

        return make

    refused("a decoder site with a wav2vec2-family model", ctc_model("--model.sites", "[dec_resid]"), expect="has none")
    refused(
        "`cnn_out` at a layer other than 0 (it comes before block 0)",
        ctc_model("--model.sites", "[cnn_out]", "--model.target_layers", "[1]"),
        expect="has layer 0 only",
    )
    cnn_whisper = lambda d: args(d, small_model_path, "--model.sites", "[cnn_out]")  # noqa: E731
    refused("`cnn_out` (the wav2vec2 family's feature encoder) with a Whisper model", cnn_whisper, expect="no such")
    refused("a word a wav2vec2-family model cannot spell", ctc_model(pairs="word_a,word_b\nbat,päť\n"), expect="lacks")
    refused("`--data.tts best` with a wav2vec2-family model", ctc_model("--data.tts", "best"), expect="hibari")

    def with_file(name, text="", **kwargs):
        def make(d):
            (d / name).parent.mkdir(exist_ok=True)
            (d / name).write_text(text)
            return args(d, small_model_path, **kwargs)

        return make

    refused("`--writer.output_dir` is an existing file", with_file("out"))

    def empty_name(d):
        monkeypatch.chdir(d)  # where an empty name would write the run
        return args(d, small_model_path, "--writer.output_dir", "")

    refused("`--writer.output_dir ''` (it would be the current folder)", empty_name)
    refused("`--writer.output_dir` holds files that are not a run's", with_file("out/notes.txt", "mine\n"))
    monkeypatch.chdir(ROOT)
    refused(
        "`--writer.output_dir` below a file (cannot be created)", lambda d: with_file("file", out=d / "file" / "out")(d)
    )
    holder = None

    def in_use(d):
        nonlocal holder
        holder = hold_lock(d / "out")
        return args(d, small_model_path)

    try:
        refused("`--writer.output_dir` used by a run that is still going", in_use)
    finally:
        holder.kill()
        holder.wait()
    refused("`--writer.output_dir` holds a finished run", with_file("out/summary.json", "{}"))
    stopped = refused(
        "SIGTERM (or SIGINT: exit 130) during a run", lambda d: args(d, small_model_path), code=143, env="part1:SIGTERM"
    )
    assert len(list(stopped.glob("out/parts/items-*.csv"))) == 1
    synthesis_stopped = refused(
        "SIGTERM while clips are synthesised (stops before the next clip)",
        lambda d: args(d, small_model_path),
        code=143,
        env="synthesis1:SIGTERM",
    )
    refused("the stopped run again, without `--writer.resume true`", lambda d: args(d, small_model_path), at=stopped)
    refused(
        "the stopped run resumed with other settings (`--data.limit 1`)",
        lambda d: args(d, small_model_path, "--writer.resume", "true", "--data.limit", "1"),
        at=stopped,
    )

    def resumed(label, damage):
        damage()
        main(args(stopped, small_model_path, "--writer.resume", "true"))
        err = capsys.readouterr().err.strip().splitlines()
        warnings = [line for line in err if line.startswith("wpatch: warning: ")]
        assert len(warnings) == 1 and (stopped / "out/summary.json").exists(), err
        rows.append(table_row(f"{label} (resumed: the run goes on)", 0, warnings[0], stopped, small_model_path))

    part = stopped / "out/parts/items-00000000.csv"
    resumed("the stopped run's part cut short or damaged", lambda: part.write_bytes(part.read_bytes()[:-20]))

    def unrecorded():
        (stopped / "out/summary.json").unlink()  # unfinished again
        part.with_suffix(".json").unlink()  # as if killed between writing the part and its record

    resumed("a part without its record (the run was killed between writing the two)", unrecorded)
    (stopped / "out/summary.json").unlink()
    to_csv = pd.DataFrame.to_csv

    def merge_fails(code: int) -> list[str]:
        """The stopped run resumed while every table write fails with OSError `code`: its stderr lines."""

        def failing(*_args, **_kwargs):
            raise OSError(code, os.strerror(code))

        monkeypatch.setattr(pd.DataFrame, "to_csv", failing)
        with pytest.raises(SystemExit) as exit_info:
            main(args(stopped, small_model_path, "--writer.resume", "true"))
        monkeypatch.setattr(pd.DataFrame, "to_csv", to_csv)
        err = capsys.readouterr().err.strip().splitlines()
        assert exit_info.value.code == 2, err
        return err

    err = merge_fails(errno.ENOSPC)
    assert err[-1].startswith("wpatch: error: could not write"), err
    rows.append(table_row("no space left on the disk while the run is merged", 2, err[-1], stopped, small_model_path))

    # huggingface and python: Hugging Face folders checked whole before any folder is made; wpatch.run's own words
    err = merge_fails(errno.EROFS)
    assert (
        "(Read-only file system); every finished part is kept; its file system is "
        "read-only: remount it read-write, then continue with" in err[-1]
    ), err
    rows.append(table_row("the disk turned read-only while the run is merged", 2, err[-1], stopped, small_model_path))

    def checkpoint(damage, **tensors):
        def make(d):
            damage(write_checkpoint(d / "hf", **tensors))
            return args(d, str(d / "hf"))

        return make

    def edit_config(**changes):
        return lambda hf: (hf / "config.json").write_text(
            json.dumps({**json.loads((hf / "config.json").read_text()), **changes})
        )

    def cut(hf):
        (hf / "model.safetensors").write_bytes((hf / "model.safetensors").read_bytes()[:-1000])

    def index(text):
        def damage(hf):
            (hf / "model.safetensors").rename(hf / "model-00001-of-00001.safetensors")
            (hf / "model.safetensors.index.json").write_text(text)

        return damage

    for label, make, expect in (
        ("a Hugging Face `model.safetensors` cut short", checkpoint(cut), "model.safetensors is cut short"),
        (
            "a Hugging Face config.json whose `d_model` the weights do not have",
            checkpoint(edit_config(d_model=16, encoder_ffn_dim=64, decoder_ffn_dim=64)),
            "but config.json's d_model (16) makes it [16, 80, 3]",
        ),
        (
            "Hugging Face weights of 1000 encoder positions (config.json: `max_source_positions` 1500)",
            checkpoint(lambda hf: None, **{"model.encoder.embed_positions.weight": torch.zeros(1000, 8)}),
            "config.json's max_source_positions (1500) makes it [1500, 8]",
        ),
        (
            'a Hugging Face config.json with `"num_mel_bins": "80"`',
            checkpoint(edit_config(num_mel_bins="80")),
            "config.json key num_mel_bins is '80', not a whole number",
        ),
        (
            "a Hugging Face config.json that is a list",
            checkpoint(lambda hf: (hf / "config.json").write_text("[]")),
            "config.json holds [], not an object",
        ),
        (
            "a Hugging Face config.json with `encoder_attention_heads` 5 (not dividing `d_model`)",
            checkpoint(edit_config(encoder_attention_heads=5)),
            "config.json key encoder_attention_heads is 5, which does not divide d_model 8",
        ),
        (
            "a Hugging Face weight index that is not JSON",
            checkpoint(index("{")),
            "model.safetensors.index.json is not readable JSON",
        ),
        (
            "a Hugging Face weight index without `weight_map`",
            checkpoint(index('{"metadata": {}}')),
            "model.safetensors.index.json has no weight_map",
        ),
    ):
        assert not (refused(label, make, expect=expect) / "out").exists()

    def python(label, call, expect):
        """A row for what `wpatch.run` raises: its type and one-line message."""
        with pytest.raises((WpatchError, RunInterrupted)) as raised:
            call()
        rows.append(table_row(label, "-", f"{type(raised.value).__name__}: {raised.value}", stopped, small_model_path))
        assert expect in rows[-1] and "\n" not in rows[-1], rows[-1]

    python(
        "`wpatch.run(pairs=DataFrame)` without a `word_b` column",
        lambda: wpatch_api.run(pd.DataFrame({"word_a": ["bat"]}), model=small_model_path, output_dir=stopped / "df"),
        "WpatchError: the DataFrame given as pairs lacks column 'word_b'",
    )
    with wpatch_api.ONE_RUN:  # as while another thread's run is going
        python(
            "`wpatch.run` while another thread's run is going",
            lambda: wpatch_api.run(model=small_model_path, output_dir=stopped / "second"),
            "WpatchError: wpatch.run is already running in this process",
        )
    monkeypatch.setenv("WPATCH_FAULT", "part1:SIGINT")
    python(
        "Ctrl-C (SIGINT) during `wpatch.run`",
        lambda: wpatch_api.run(
            stopped / "pairs.csv",
            model=small_model_path,
            config=ROOT / "configs/experiment_a.yaml",
            tts="hibari",
            cache_dir=stopped / "clips",
            batch_size=1,
            max_tokens=3,
            output_dir=stopped / "interrupted",
            progress=False,
        ),
        "RunInterrupted: stopped by SIGINT; every finished batch is kept; continue with wpatch.run(...) with the same "
        "arguments, output_dir='D/interrupted' and resume=True",
    )
    monkeypatch.setenv("WPATCH_FAULT", "")
    capsys.readouterr()
    refused("a word that is only punctuation (`!!!`)", lambda d: args(d, small_model_path, pairs=PAIRS + "!!!,cat\n"))
    refused("the same pair twice", lambda d: args(d, small_model_path, pairs=PAIRS + "bat,pat\n"))

    def long_recording(d):
        soundfile.write(d / "long.wav", np.zeros(16000 * 31, np.float32), 16000)
        return args(d, small_model_path, pairs="word_a,word_b,audio_a\nbat,pat,\nhello,yellow,long.wav\n")

    refused("a recording longer than 30 s", long_recording)

    def directory_recording(d):
        (d / "takes").mkdir()
        return args(d, small_model_path, pairs="word_a,word_b,audio_a\nbat,pat,\nhello,yellow,takes\n")

    refused("a folder given as a recording", directory_recording, expect="D/takes is a directory, not an audio file")

    def unknown_word(d):
        soundfile.write(d / "ojo.wav", np.zeros(16000, np.float32), 16000)
        return args(d, small_model_path, pairs="word_a,word_b,lang_b,audio_b\neye,,fr,ojo.wav\n")

    refused("a recording whose word is not given", unknown_word, expect="line 2: word_b is empty, so the text of")

    def recording_span(span, name="take.wav"):
        def make(d):
            soundfile.write(d / "take.wav", np.zeros(16000, np.float32), 16000)
            (d / "take.opus").write_bytes(b"OggS, but no opus stream")
            return args(
                d, small_model_path, pairs=f"word_a,word_b,audio_a,start_a,end_a\nbat,pat,,,\nhi,yo,{name},{span}\n"
            )

        return make

    refused("a word span outside its recording", recording_span("0.5,1.5"), expect="lies outside the recording")
    refused("an empty word span", recording_span("0.5,0.5"), expect="line 3: audio_a D/take.wav: the span 0.5-0.5")
    refused("an opus file that cannot be decoded", recording_span("0,0.5", "take.opus"), expect="take.opus cannot be")
    refused(
        "a carrier sentence without `{}`",
        lambda d: args(d, small_model_path, pairs="word_a,word_b,carrier\nbat,pat,say {} again\nhot,cold,say it\n"),
        expect="line 3: carrier 'say it' needs exactly one {}",
    )

    def in_context(columns: str, values: str, seconds: float = 1.0):
        def make(d):
            soundfile.write(d / "take.wav", np.zeros(round(seconds * 16000), np.float32), 16000)
            pairs = f"word_a,word_b,audio_a,start_a,end_a,{columns}\nbat,pat,,,,\nhi,yo,take.wav,0.1,0.5,{values}\n"
            return args(d, small_model_path, pairs=pairs)

        return make

    refused(
        "a recorded word's context without `{}`",
        in_context("context_a", "hi there"),
        expect="line 3: context_a 'hi there' needs exactly one {}",
    )
    refused(
        "a context clip that does not hold the word's span",
        in_context("context_a,context_start_a,context_end_a", "{} there,0.3,0.9"),
        expect="line 3: context_a '{} there': the clip 0.3-0.9 s must hold the word's span 0.1-0.5 s",
    )
    refused(
        "a context clip longer than 30 s",
        in_context("context_a,context_start_a,context_end_a", "{} there,0,31", seconds=40),
        expect="the clip 0-31 s is longer than the 30 s Whisper hears",
    )
    refused(
        "a context without its clip in a recording longer than 30 s",
        in_context("context_a", "{} there", seconds=40),
        expect="the recording is 40.0 s long and Whisper hears only 30 s; give context_start_a/context_end_a",
    )

    def long_word(d):
        (d / "corpus").mkdir()
        soundfile.write(d / "corpus" / "take.wav", np.zeros(40 * 16000, np.float32), 16000)
        (d / "corpus" / "take.ctm").write_text("take 1 0.5 31.0 bed\ntake 1 32.0 0.3 bird\n")
        return ["stimuli", str(d / "corpus"), "--out", str(d / "pairs.csv")]

    refused(
        "`wpatch stimuli`: an aligned word that no 30 s clip can hold",
        long_word,
        expect="CTM D/corpus/take.ctm line 1: word 'bed' in D/corpus/take.wav: the span 0.5-31.5 s is longer than",
        command=wpatch,
    )

    def corpus(d):
        (d / "corpus" / "notes").mkdir(parents=True)
        return ["stimuli", str(d / "corpus"), "--out", str(d / "pairs.csv")]

    refused("`wpatch stimuli` on a folder in no corpus layout", corpus, expect="none of the layouts", command=wpatch)

    def corpus_word(d):
        (d / "corpus").mkdir()
        soundfile.write(d / "corpus" / "take.wav", np.zeros(16000, np.float32), 16000)
        (d / "corpus" / "take.ctm").write_text("take 1 0.1 0.3 bed\ntake 1 0.5 0.3 bird\n")
        return ["stimuli", str(d / "corpus"), "--out", str(d / "pairs.csv"), "--words", "bed,bard"]

    refused(
        "`wpatch stimuli --words` with a word the alignments lack", corpus_word, expect="no word 'bard'", command=wpatch
    )

    # stimuli from natural recordings: a labelled folder by file-name pattern, soundtheme word lists
    def labelled(pattern: str, *extra: str):
        def make(d):
            (d / "digits").mkdir()
            for name in ("7_ann_0.wav", "8_ann_0.wav"):
                soundfile.write(d / "digits" / name, np.zeros(4000, np.float32), 8000)
            return ["stimuli", str(d / "digits"), "--pattern", pattern, "--out", str(d / "pairs.csv"), *extra]

        return make

    def themes(languages: str):
        def make(d):
            (d / "sounds" / "de").mkdir(parents=True)
            soundfile.write(d / "sounds" / "de" / "eye.wav", np.zeros(4000, np.float32), 8000)
            (d / "sounds" / "de.soundtheme").write_text(
                '<language code="de"><sound name="eye" file="de/eye.wav"/></language>'
            )
            return [
                "stimuli",
                str(d / "sounds"),
                "--pair-by",
                "translation",
                "--languages",
                languages,
                "--out",
                str(d / "pairs.csv"),
            ]

        return make

    for label, make, expect in (
        (
            "`wpatch stimuli --pattern` that no file's name matches",
            labelled("{speaker}-{word}.wav"),
            "no file in D/digits matches the pattern '{speaker}-{word}.wav' (e.g. '7_ann_0.wav' does not)",
        ),
        (
            "`wpatch stimuli --pattern` with a field it does not know",
            labelled("{digit}_{speaker}_{take}.wav"),
            "names field {digit}; the fields are {word}, {speaker}, {language}, {take}",
        ),
        (
            "`wpatch stimuli --pattern` with one word only",
            labelled("7_{speaker}_{word}.wav"),
            "hold 1 word(s); a pair needs two different words of one language",
        ),
        (
            "`wpatch stimuli --pair-by translation`: a language whose files carry English names (no text)",
            themes("de"),
            "de.soundtheme names 1 of its 1 files by the objects' English names, so the de words' text is not in",
        ),
        (
            "`wpatch stimuli --pair-by translation` with a language it lacks",
            themes("en,es"),
            "no en.soundtheme in D/sounds; its languages are de",
        ),
        (
            "`wpatch stimuli --pair-by translation` with three languages",
            themes("de,de,de"),
            "give one language (pairs within it) or two different ones",
        ),
    ):
        d = refused(label, make, expect=expect, command=wpatch)
        assert not (d / "pairs.csv").exists()

    # stimuli: alignment files that do not parse completely, spans no clip can hold, words the decoder cannot read
    def aligned(name: str, text: str | bytes, seconds: float = 2.0):
        def make(d):
            (d / "corpus").mkdir()
            soundfile.write(d / "corpus" / "take.wav", np.zeros(round(seconds * 16000), np.float32), 16000)
            (d / "corpus" / name).write_bytes(text if isinstance(text, bytes) else text.encode())
            return ["stimuli", str(d / "corpus"), "--out", str(d / "pairs.csv")]

        return make

    grid = (
        'File type = "ooTextFile"\nObject class = "TextGrid"\n\nxmin = 0\nxmax = 2\ntiers? <exists>\nsize = 1\n'
        'item []:\n    item [1]:\n        class = "IntervalTier"\n        name = "words"\n        xmin = 0\n'
        "        xmax = 2\n        intervals: size = 3\n"
        + "".join(
            f"        intervals [{i}]:\n            xmin = {a}\n            xmax = {b}\n            text = {t}\n"
            for i, (a, b, t) in enumerate([(0, 0.5, '"bed"'), (0.5, 1, '"bird"'), (1, 2, '""')], 1)
        )
    )
    for label, make, expect in (
        (
            "`wpatch stimuli`: a TextGrid cut short",
            aligned("take.TextGrid", grid[: grid.index("            xmax = 2")]),
            "TextGrid D/corpus/take.TextGrid ends at line 24 where an interval's end should follow: it is cut short",
        ),
        (
            "`wpatch stimuli`: an aligned word with a negative start",
            aligned("take.ctm", "take 1 0.1 0.3 bed\ntake 1 -0.5 0.3 bird\n"),
            "line 2: word 'bird' in D/corpus/take.wav: the span -0.5--0.2 s lies outside the recording (0-2.000 s)",
        ),
        (
            "`wpatch stimuli`: an aligned word past its recording's end",
            aligned("take.ctm", "take 1 0.1 0.3 bed\ntake 1 1.8 0.4 bird\n"),
            "line 2: word 'bird' in D/corpus/take.wav: the span 1.8-2.2 s lies outside the recording",
        ),
        (
            "`wpatch stimuli`: an aligned word 600 s long",
            aligned("take.ctm", "take 1 0.1 0.3 bed\ntake 1 1 600 bird\n", seconds=700),
            "line 2: word 'bird' in D/corpus/take.wav: the span 1-601 s is longer than the 30 s Whisper hears",
        ),
        (
            "`wpatch stimuli`: a CTM saved in Latin-1",
            aligned("take.ctm", "take 1 0.1 0.3 bed\ntake 1 0.5 0.3 café\n".encode("latin-1")),
            "CTM D/corpus/take.ctm line 2 is not UTF-8 text (byte 0xe9); save it as UTF-8",
        ),
    ):
        d = refused(label, make, expect=expect, command=wpatch)
        assert not (d / "pairs.csv").exists()
    d = refused(
        "a 9,000-character word (more tokens than the decoder's context)",
        lambda d: args(d, small_model_path, pairs=PAIRS + f"{'ba' * 4500},cold\n"),
        expect="line 4: word_a 'babababababababababababababababababababa'... (9000 characters) is read as",
    )
    assert not (d / "out").exists()
    refused(
        "`--data.tts kokoro:nonexistent` (a voice that does not exist)",
        lambda d: args(d, small_model_path, "--data.tts", "kokoro:nonexistent"),
        expect="kokoro has no voice 'nonexistent' offline; use one of af_bella",
    )
    refused(
        "`--data.tts best:am_adam` (the per-word choice given a voice)",
        lambda d: args(d, small_model_path, "--data.tts", "best:am_adam"),
        expect="best takes no voice",
    )
    refused(
        "`--data.tts bset` (a misspelt speaker)",
        lambda d: args(d, small_model_path, "--data.tts", "bset"),
        expect="unknown TTS backend 'bset'; use one of hibari, kokoro, espeak, piper, gtts, or best",
    )

    def best_french(d):
        multilingual = save_checkpoint(
            random_whisper(dataclasses.replace(SMALL_DIMS, n_vocab=51865), seed=3), d / "multilingual.pt"
        )
        pairs = "word_a,word_b,lang_a,lang_b\nchat,chien,fr,fr\n"
        return args(d, multilingual, "--model.language", "null", "--data.tts", "best", pairs=pairs)

    refused("French words with `--data.tts best`", best_french, expect="best has no voices for language 'fr'")
    refused(
        "Spanish words (`lang_b` es) on an English-only model",
        lambda d: args(d, small_model_path, pairs="word_a,word_b,lang_b\nbat,pat,en\ncat,gato,es\n"),
        expect="pairs file D/pairs.csv line 3 has lang_b 'es'",
    )
    refused(
        "`--model.language es` on an English-only model",
        lambda d: args(d, small_model_path, "--model.language", "es"),
        expect="English-only",
    )

    def hibari_spanish(d):
        multilingual = save_checkpoint(
            random_whisper(dataclasses.replace(SMALL_DIMS, n_vocab=51865), seed=3), d / "multilingual.pt"
        )
        return args(d, multilingual, "--model.language", "null", pairs="word_a,word_b,lang_b\ncat,gato,es\n")

    refused(
        "Spanish words with the English-only voice `hibari` (multilingual model)",
        hibari_spanish,
        expect="use --data.tts kokoro or espeak",
    )

    def bad_yaml(d):
        (d / "bad.yaml").write_text("model:\n  max_tokens: 3\n  alphas: [1.0\ndata:\n  limit: 1\n")
        return args(d, small_model_path, "--config", str(d / "bad.yaml"))

    refused("a YAML syntax error in a `--config` file", bad_yaml, expect="config file D/bad.yaml line 4, column 5")
    refused(
        "`--trainer.strategy nonsense` (Lightning's own check)",
        lambda d: args(d, small_model_path, "--trainer.strategy", "nonsense"),
        expect="invalid strategy name",
    )
    refused(
        "`wpatch report D` on a folder that is not a run",
        lambda d: ["report", str(d)],
        command=wpatch,
        expect="D is not a wpatch run (no predictions.csv)",
    )
    refused(
        "`wpatch report` on a stopped run",
        lambda d: ["report", str(d / "out")],
        at=synthesis_stopped,
        command=wpatch,
        expect="--writer.resume true",
    )
    refused(
        "`wpatch compare A B` when A does not exist",
        lambda d: ["compare", str(d / "nowhere"), str(d)],
        command=wpatch,
        expect="D/nowhere does not exist",
    )

    # the attribution method's settings
    for label, extra, expect in (
        (
            "`--model.validate true` without `--model.method atp`",
            ["--model.validate", "true"],
            "add --model.method atp",
        ),
        ("`--model.verify_top 3` without `--model.method atp`", ["--model.verify_top", "3"], "add --model.method atp"),
        (
            "`--model.graddrop true` without `--model.method atp`",
            ["--model.graddrop", "true"],
            "add --model.method atp",
        ),
        ("`--model.atp_window 0`", ["--model.method", "atp", "--model.atp_window", "0"], "holds no frame"),
        (
            "`--model.validate_sample -1`",
            ["--model.method", "atp", "--model.validate", "true", "--model.validate_sample", "-1"],
            "give 0 or more",
        ),
    ):
        refused(label, lambda d, extra=extra: args(d, small_model_path, *extra), expect=expect)

    # shards (`--data.shard I/N`) and `wpatch merge`
    for shard in ("8/8", "2"):
        refused(
            f"`--data.shard {shard}`",
            lambda d, shard=shard: args(d, small_model_path, "--data.shard", shard),
            expect="is not I/N with 0 <= I < N",
        )
    refused(
        "`--data.shard 4/5` (more shards than the run has source clips)",
        lambda d: args(d, small_model_path, "--data.shard", "4/5"),
        expect="has no items",
    )
    shards = tmp_path / "shards"
    shards.mkdir()
    for name, extra in (
        ("s0", ["--data.shard", "0/2"]),
        ("s1", ["--data.shard", "1/2"]),
        ("other", ["--data.shard", "1/2", "--model.min_separation", "2"]),
        ("whole", []),
    ):
        main(args(shards, small_model_path, *extra, out=shards / name))
    shutil.copytree(shards / "s1", shards / "unfinished")
    (shards / "unfinished" / "summary.json").unlink()
    capsys.readouterr()
    for label, given, out, expect in (
        ("`wpatch merge` without one of the shards (a gap)", ["s0"], "all", "shard 1/2 is missing"),
        ("`wpatch merge` with a shard given twice (an overlap)", ["s0", "s0"], "all", "(an overlap)"),
        ("`wpatch merge` of shards with other settings", ["s0", "other"], "all", "differs from D/s0 in min_separation"),
        ("`wpatch merge` of an unfinished shard", ["s0", "unfinished"], "all", "is not finished"),
        ("`wpatch merge` of a run made without `--data.shard`", ["s0", "whole"], "all", "D/whole is not a shard"),
        ("`wpatch merge` into a folder that is not empty", ["s0", "s1"], "whole", "is not empty"),
    ):
        refused(
            label,
            lambda d, given=given, out=out: ["merge", *[str(d / g) for g in given], "--out", str(d / out)],
            at=shards,
            command=wpatch,
            expect=expect,
        )
    assert not (shards / "all").exists()

    # provenance: a table edited since its run wrote it, a folder that is no finished run
    edited = shards / "edited"
    shutil.copytree(shards / "s1", edited)
    table = (edited / "predictions.csv").read_text().splitlines(keepends=True)
    (edited / "predictions.csv").write_text("".join([*table[:2], table[2].replace(",False,", ",True,", 1), *table[3:]]))
    deleted = shards / "deleted"
    shutil.copytree(shards / "s1", deleted)
    (deleted / "predictions.csv").write_text("".join([*table[:2], *table[3:]]))
    (shards / "whole" / "summary.json").unlink()  # as if killed while its tables were written
    killed = subprocess.run(
        [
            sys.executable,
            "-m",
            "wpatch",
            "merge",
            str(shards / "s0"),
            str(shards / "s1"),
            "--out",
            str(shards / "half"),
        ],
        env={**os.environ, "PYTHONPATH": str(ROOT), "WPATCH_FAULT": "tables:SIGKILL"},
        capture_output=True,
    )
    assert killed.returncode == -9 and (shards / "half" / "predictions.csv").exists()
    for label, arguments, expect in (
        ("`wpatch report` on a run whose predictions.csv has a value changed", ["report", "edited"], "row 2 (line 3"),
        ("`wpatch report` on a run whose predictions.csv lost a row", ["report", "deleted"], "row 2 is missing"),
        ("`wpatch compare` with a run whose predictions.csv was edited", ["compare", "s0", "edited"], "row 2"),
        (
            "`wpatch merge` of a shard whose predictions.csv was edited",
            ["merge", "s0", "edited", "--out", "m"],
            "row 2",
        ),
        ("`wpatch report` on a run killed while its tables were written", ["report", "whole"], "resume"),
        ("`wpatch report` on a merge killed midway", ["report", "half"], "finish it with wpatch merge"),
    ):
        refused(
            label,
            lambda d, arguments=arguments: [
                a if a in ("report", "compare", "merge", "--out") else str(d / a) for a in arguments
            ],
            at=shards,
            command=wpatch,
            expect=expect,
        )
    assert not (shards / "m").exists() and not (shards / "half" / "summary.json").exists()

    # typed summary (wpatch.run_summary): a summary.json of a newer layout than this wpatch reads
    newer = shards / "newer"
    shutil.copytree(shards / "s1", newer)
    layout = json.loads((newer / "summary.json").read_text())
    (newer / "summary.json").write_text(json.dumps({**layout, "version": layout["version"] + 1}))
    refused(
        "`wpatch report` on a run whose summary.json has a newer layout",
        lambda d: ["report", str(d / "newer")],
        at=shards,
        command=wpatch,
        expect="newer than this wpatch reads",
    )
    # end of the typed summary's block

    # warnings: the run goes on, and says what it used
    d = tmp_path / "warned"
    d.mkdir()
    soundfile.write(d / "silence.wav", np.zeros(16000, np.float32), 16000)
    soundfile.write(d / "click.wav", 0.5 * np.ones(160, np.float32), 16000)
    caplog.clear()
    with caplog.at_level(logging.INFO):
        main(
            args(
                d,
                small_model_path,
                "--model.control",
                "false",
                pairs="word_a,word_b,audio_a,audio_b\nhello,yellow,silence.wav,click.wav\n",
            )
        )
    warned = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    silent = [m for m in warned if "has no speech" in m]
    assert len(silent) == 2 and "control donor" not in caplog.text, warned
    assert f"line 2: audio_a {d}/silence.wav" in silent[0] and "-60 dBFS" in silent[0]
    assert f"line 2: audio_b {d}/click.wav" in silent[1] and "0.010 s" in silent[1]
    rows += [
        table_row(f"{label} (the run goes on)", 0, m, d)
        for label, m in zip(("a silent 1 s recording", "a 10 ms recording"), silent)
    ]
    summary = json.loads((d / "out/summary.json").read_text())
    assert [(c["file"], c["line"], c["column"]) for c in summary["silent_clips"]] == [
        (str(d / "silence.wav"), 2, "audio_a"),
        (str(d / "click.wav"), 2, "audio_b"),
    ]

    # compare: runs of other layer pairs or items are compared on what they share, and told so
    other = d / "other"
    other.mkdir()
    predictions = read_rows(d / "out/predictions.csv")
    keep = (predictions["item_id"] != 1) & ~((predictions["source_layer"] == 2) & (predictions["target_layer"] == 2))
    predictions[keep].to_csv(other / "predictions.csv", index=False)
    capsys.readouterr()
    wpatch(["compare", str(d / "out"), str(other), "--out", str(d / "compared.csv")])
    out, notes = capsys.readouterr()
    notes = notes.strip().splitlines()
    assert notes == [
        f"wpatch: note: {other}/predictions.csv cannot be checked for edits: the run kept no record of it "
        "(predictions.json; runs made before it was kept have none)",
        "wpatch: note: the runs differ in layer pairs: 8 shared, 1 only in A (2->2), 0 only in B; comparing the "
        "shared ones",
        "wpatch: note: the runs differ in items: 1 shared, 1 only in A (p00000 b->a yellow->hello hibari), 0 only "
        "in B; comparing the shared ones",
        "wpatch: note: the runs differ in cells: 8 shared, 1 only in A, 0 only in B; comparing the shared ones",
    ], notes
    assert len(out.strip().split("\n\n")[1].splitlines()) == 1 + 8  # after what it shows: header, shared cells
    rows.append(
        table_row(
            "`wpatch compare` of a table no run recorded (made by hand, or before runs recorded it)", 0, notes[0], d
        )
    )
    rows += [table_row("`wpatch compare` on runs of other layer pairs or items (exit 0)", 0, n, d) for n in notes[1:]]

    cache = ClipCache(tmp_path / "cache", make_backend("espeak"))
    clip = cache.get("bat", "en")
    for label, damage in (
        ("a cached clip emptied to 0 bytes", lambda: clip.write_bytes(b"")),
        (
            "a cached clip cut to half its bytes",
            lambda: clip.write_bytes(clip.read_bytes()[: len(clip.read_bytes()) // 2]),
        ),
    ):
        good = clip.read_bytes()
        damage()
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="wpatch.stimuli.tts"):
            assert cache.get("bat", "en") == clip and clip.read_bytes() == good
        assert len(caplog.messages) == 1 and "synthesising it again" in caplog.messages[0]
        rows.append(table_row(f"{label} (the run goes on)", 0, caplog.messages[0], tmp_path / "cache"))

    table = "\n".join(["| input | exit | what the user sees (one line on stderr) |", "|---|---|---|", *rows]) + "\n"
    if os.environ.get("WPATCH_WRITE_DOCS"):
        DOC.write_text(table)
    assert DOC.read_text() == table, "docs/bad_inputs.md is out of date: rerun this test with WPATCH_WRITE_DOCS=1"


def test_a_bug_is_not_taken_for_bad_input(tmp_path, small_model_path, monkeypatch):
    """Only wpatch's own errors and the parser's become one line: anything else is a bug and shows its traceback."""

    def bug(*_):
        raise ValueError("a bug, not bad input")

    monkeypatch.setattr("wpatch.cli.check_writable", bug)
    with pytest.raises(ValueError, match="a bug, not bad input"):
        main(args(tmp_path, small_model_path))


def test_stop_messages_start_on_their_own_line(tmp_path, small_model_path):
    """With the progress bar on, SIGTERM's messages are not written onto the bar's line."""
    done = subprocess.run(
        [sys.executable, "-m", "wpatch", "predict", *args(tmp_path, small_model_path)[:-2]],
        cwd=ROOT,
        env={**os.environ, "WPATCH_FAULT": "part1:SIGTERM"},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 143 and "patching:" in done.stderr, done.stderr
    assert "SIGTERM received" in done.stderr and "stopped by SIGTERM" in done.stderr
    assert not re.findall(r"[^\r\n]wpatch: ", done.stderr), done.stderr


def test_cells_with_one_pair_summarise_cleanly(tmp_path, small_model_path, caplog):
    """One pair (`--data.limit 1`), every effect valid (separation at least -1000): no cell has the two pairs a
    bootstrap interval needs. Its items have no unrelated control donor, and the run (with control patches) says so."""
    with caplog.at_level(logging.INFO):
        main(
            args(
                tmp_path,
                small_model_path,
                "--data.limit",
                "1",
                "--model.min_separation",
                "-1000",
                "--model.control",
                "true",
            )
        )
    assert "control donor: 2 of 2 items" in caplog.text
    summary = json.loads((tmp_path / "out/summary.json").read_text())
    cells = pd.read_csv(tmp_path / "out/cells.csv")
    assert cells["effect"].notna().all() and cells["effect_low"].isna().all()
    assert summary["conditions"]["block_out_all_a1_denoising_source"]["effect_pairs"] == 1
    assert summary["clip_cache"] == {"synthesised": 2, "resynthesised_damaged": 0}


def test_clip_cache_verifies_what_it_serves(tmp_path, caplog):
    cache = ClipCache(tmp_path, make_backend("espeak"))
    clip = cache.get("pat", "en")
    good = clip.read_bytes()
    # a cache made before sidecars: checked by its header and length, kept, and given a sidecar
    clip.with_suffix(".json").unlink()
    again = ClipCache(tmp_path, make_backend("espeak"))
    assert again.get("pat", "en") == clip and again.synthesized == 0 and clip.with_suffix(".json").exists()
    clip.with_suffix(".json").unlink()
    clip.write_bytes(good[:-100])
    with caplog.at_level(logging.WARNING, logger="wpatch.stimuli.tts"):
        assert again.get("pat", "en") == clip and clip.read_bytes() == good
    assert again.repaired == 1 and "fewer samples than its wav header says" in caplog.text
    assert not [p for p in tmp_path.rglob("*") if p.name.endswith(".partial")]


def test_an_empty_normalised_word_never_matches():
    assert not is_word("...", "!!!") and not has_word("...", "!!!") and not has_word("a b", "?")
    assert is_word(" Bat.", "bat") and has_word("the cat sat", "Cat") and not has_word("category", "cat")
