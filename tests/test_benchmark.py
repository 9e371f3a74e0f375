"""The benchmark script runs its three modes on the same rows and agrees with the original-decode baseline."""

from scripts.benchmark import main


def test_benchmark_modes_agree_on_transcripts(tmp_path, small_model_path, monkeypatch, capsys):
    monkeypatch.setenv("WPATCH_CACHE", str(tmp_path))
    report = main(
        [
            "--model",
            small_model_path,
            "--limit",
            "2",
            "--baseline-rows",
            "4",
            "--profile",
            "--json-out",
            str(tmp_path / "b.json"),
        ]
    )
    assert set(report["modes"]) == {"wpatch", "original", "original-decode"}
    assert report["rows"] == 4 * 9 and report["modes"]["original"]["rows_timed"] == 4
    assert report["identical_transcripts_vs_original_decode"] == "4/4"
    assert all(mode["rows_per_s"] > 0 for mode in report["modes"].values())
    captured = capsys.readouterr()
    printed = captured.out
    assert "wpatch.encoder.clean" in printed and "original-decode" in printed
    # progress while it runs, one line as each mode starts and ends (it was silent until the end)
    assert captured.err.count("[benchmark") >= 7 and "rows/s" in captured.err
    small = main(["--model", small_model_path, "--limit", "1", "--baseline-rows", "12", "--modes", "original"])
    assert small["modes"]["original"]["rows_timed"] == 8  # `original` on a small sample by default
