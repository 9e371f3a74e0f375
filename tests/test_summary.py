"""summary.json is one typed record (`wpatch.run_summary`): it carries its layout's version, a merge combines every
part the shards recorded (the word frames of a carrier run too), a newer layout is refused in one line, and a run
made before a setting existed resumes and re-analyses with that setting's default, saying so in one note."""

import json
import shutil

import pytest

from tests.predict_run import main, predict_args
from wpatch.cli import main as wpatch_command
from wpatch.run_summary import VERSION, Recorded, RunSummary

PAIRS = "word_a,word_b\nbat,pat\nhot,cold\n"
CARRIED = "word_a,word_b,category,carrier\nbat,pat,consonant,say {} again\nhot,cold,semantic,say {} again\n"


def args(tmp_path, model, out, *extra, pairs=PAIRS):
    """Two pairs, layers 0 and 2, three tokens at most."""
    layers = ("--model.source_layers", "[0, 2]", "--model.target_layers", "[0, 2]")
    return predict_args(tmp_path, model, out, *extra, pairs=pairs, batch_size=2, max_tokens=3, options=layers)


@pytest.fixture(scope="module")
def run(tmp_path_factory, small_model_path):
    tmp_path = tmp_path_factory.mktemp("summary")
    main(args(tmp_path, small_model_path, tmp_path / "run"))
    return tmp_path


def notes(capsys) -> list[str]:
    return [line for line in capsys.readouterr().err.splitlines() if line.startswith("wpatch: note: ")]


def test_the_summary_has_its_version_and_reads_back_as_written(run):
    text = (run / "run" / "summary.json").read_text()
    summary = json.loads(text)
    assert next(iter(summary)) == "version" and summary["version"] == VERSION
    assert RunSummary.read(run / "run" / "summary.json").json() == text


def test_a_summary_of_a_newer_layout_is_refused_in_one_line(run, tmp_path, capsys):
    newer = tmp_path / "newer"
    shutil.copytree(run / "run", newer)
    summary = json.loads((newer / "summary.json").read_text())
    (newer / "summary.json").write_text(json.dumps({**summary, "version": VERSION + 1}))
    with pytest.raises(SystemExit) as refused:
        wpatch_command(["report", str(newer)])
    err = capsys.readouterr().err.strip().splitlines()
    assert refused.value.code == 2 and len(err) == 1
    assert err[0] == (
        f"wpatch: error: {newer}/summary.json has layout version {VERSION + 1}, newer than this wpatch reads "
        f"({VERSION}); read it with the wpatch that wrote it, or update wpatch"
    )


def test_a_run_made_before_a_setting_existed_resumes_with_its_default_and_says_so(
    run, tmp_path, small_model_path, capsys
):
    old = tmp_path / "old"
    shutil.copytree(run / "run", old)
    (old / "summary.json").unlink()  # as if killed during the final merge, by a wpatch without `control`
    record = json.loads((old / "run.json").read_text())
    del record["settings"]["control"]
    (old / "run.json").write_text(json.dumps(record))
    capsys.readouterr()
    with pytest.raises(SystemExit):  # the default is what the old run did: another value is another run
        main(args(run, small_model_path, old, "--writer.resume", "true", "--model.control", "true"))
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "holds a run with control=False, not True;" in err[0]
    main(args(run, small_model_path, old, "--writer.resume", "true"))
    assert notes(capsys) == [
        f"wpatch: note: {old}/run.json has no setting control (the run was made before it existed): taken as its "
        "default: control=False"
    ]
    assert json.loads((old / "run.json").read_text())["settings"]["control"] is False
    assert (old / "summary.json").exists()


def test_a_summary_without_a_setting_is_reanalysed_with_its_default_and_says_so(run, tmp_path, capsys):
    old = tmp_path / "old"
    shutil.copytree(run / "run", old)
    summary = json.loads((old / "summary.json").read_text())
    del summary["version"], summary["control"]  # written before both existed
    (old / "summary.json").write_text(json.dumps(summary, indent=2))
    capsys.readouterr()
    wpatch_command(["report", str(old)])
    assert notes(capsys) == [
        f"wpatch: note: {old}/summary.json has no setting control (the run was made before it existed): taken as "
        "its default: control=False"
    ]
    again = json.loads((old / "summary.json").read_text())
    assert again["control"] is False and again["version"] == VERSION


def test_a_merged_carrier_run_keeps_every_part_its_shards_recorded(tmp_path, small_model_path, capsys):
    carried = ("--data.tts", "espeak", "--model.windows", "[word]")
    for shard in ("0/2", "1/2"):
        main(
            args(tmp_path, small_model_path, tmp_path / f"s{shard[0]}", *carried, "--data.shard", shard, pairs=CARRIED)
        )
    shards = [RunSummary.read(tmp_path / s / "summary.json").recorded for s in ("s0", "s1")]
    assert shards[0].word_frames["clips"] == 4  # every clip of the run, in each shard
    wpatch_command(["merge", str(tmp_path / "s0"), str(tmp_path / "s1"), "--out", str(tmp_path / "whole")])
    whole = RunSummary.read(tmp_path / "whole" / "summary.json").recorded
    assert whole.word_frames == shards[0].word_frames
    assert whole.silent_clips == shards[0].silent_clips and whole.environment == shards[0].environment
    assert whole.clip_cache == {k: shards[0].clip_cache[k] + shards[1].clip_cache[k] for k in shards[0].clip_cache}
    assert whole.wall_time_s == round(shards[0].wall_time_s + shards[1].wall_time_s, 2) and whole.shard_items is None


def test_a_new_recorded_part_says_how_a_merge_combines_it():
    parts = [Recorded(wall_time_s=1.0, clip_cache={"synthesised": 2}, shard_items={"index": i}) for i in (0, 1)]
    assert Recorded.combined(parts) == Recorded(wall_time_s=2.0, clip_cache={"synthesised": 4})
