"""scripts/scaling.py: each point is a real `wpatch predict` whose rows are items x layer pairs, and the log-mel
cache's size per clip is a float32 (n_mels, 3000) array plus numpy's header."""

import json

from scripts import scaling


def test_points_count_the_rows_of_each_model(tmp_path):
    out = tmp_path / "points.json"
    results = scaling.main(["--blocks", "1", "2", "--pairs", "1", "--out", str(tmp_path), "--json-out", str(out)])
    assert [(r["blocks"], r["layer_pairs"], r["rows"]) for r in results] == [(1, 1, 2), (2, 4, 8)]
    for r in results:
        assert r["rows"] == r["items"] * r["layer_pairs"] == 2 * r["pairs"] * r["blocks"] ** 2
        assert r["rows_per_s"] > 0 and r["peak_rss_mib"] > 0 and r["cpu_s"] > 0
        assert (tmp_path / f"{r['model']}-p1" / "summary.json").exists()  # each point a finished run folder
    written = json.loads(out.read_text())
    assert written["points"] == results
    assert written["mel_bytes_per_clip"] - 80 * 3000 * 4 in range(64, 257)  # the .npy header: 64 to 256 bytes
