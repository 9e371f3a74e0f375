"""The GPU check's parts beside the benchmark (`scripts/device_check.py` runs them after installing the wheels):
the fixed default batch's peak memory, a Hugging Face-format checkpoint run beside the bundle's, the attribution
method (a validated run and the map's time per item), and the GPU-marked tests.

Only the standard library is imported here at first: torch and wpatch only exist once the wheels are installed.
"""

import json
import shutil
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# predictions.csv of one model loaded from two formats: the weights are checked equal bit for bit first, so both
# runs do the same fp32 operations on the same numbers; 1e-4 (about 100 fp32 ulps at the largest |log-probability|,
# ~15 nats) allows only a different kernel order, far below any loading error (a wrong tensor moves scores by O(1))
HF_TOLERANCE = 1e-4
ATP_SAMPLE, ATP_TOP = 8, 4  # cells patched for real beside the map, per item and patch direction


def default_batch_peaks(model: str, pairs_file: str, limit: int, precisions: list[str]) -> tuple[dict[str, int], int]:
    """Peak CUDA bytes of the fixed default batch (16 source clips, decode chunk 64) on the costliest 16 clips,
    per precision, and the GPU's memory."""
    import torch

    from datamodules import PairDataModule
    from wpatch.patching.autobatch import DEFAULT_BATCH, largest_groups, peak_memory
    from wpatch.patching.module import PatchingModule

    dm = PairDataModule(pairs_file=pairs_file, limit=limit, model=model, tts="espeak")
    dm.setup("predict")
    module = PatchingModule(model=model).to("cuda")
    return {
        p: peak_memory(module, dm, largest_groups(dm, DEFAULT_BATCH), p) for p in precisions
    }, torch.cuda.get_device_properties(0).total_memory


def write_huggingface(model, folder: Path) -> Path:
    """`model` (openai-whisper) as a transformers Whisper checkpoint folder, the layout `save_pretrained` writes:
    config.json, generation_config.json (the alignment heads) and model.safetensors (fp32, the output projection
    tied to the token embedding, so not stored)."""
    from safetensors.torch import save_file

    from wpatch.models.huggingface import name_map

    d = model.dims
    config = {
        "model_type": "whisper",
        "architectures": ["WhisperForConditionalGeneration"],
        "vocab_size": d.n_vocab,
        "num_mel_bins": d.n_mels,
        "d_model": d.n_audio_state,
        "encoder_layers": d.n_audio_layer,
        "encoder_attention_heads": d.n_audio_head,
        "decoder_layers": d.n_text_layer,
        "decoder_attention_heads": d.n_text_head,
        "encoder_ffn_dim": 4 * d.n_audio_state,
        "decoder_ffn_dim": 4 * d.n_text_state,
        "max_source_positions": d.n_audio_ctx,
        "max_target_positions": d.n_text_ctx,
        "activation_function": "gelu",
        "scale_embedding": False,
        "tie_word_embeddings": True,
        "torch_dtype": "float32",
    }
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(config, indent=2))
    heads = model.alignment_heads.to_dense().nonzero().tolist()
    (folder / "generation_config.json").write_text(json.dumps({"alignment_heads": heads}))
    state = model.state_dict()
    names = name_map(d.n_audio_layer, d.n_text_layer)
    save_file(
        {f"model.{hf}": state[key].float().contiguous() for key, hf in names.items()}, folder / "model.safetensors"
    )
    return folder


def predict_run(model: str, out: Path, limit: int, accelerator: str, *extra: str) -> tuple[float, Path]:
    """`wpatch predict` (Experiment A's settings, espeak clips from the check's cache) on `limit` English pairs
    into a new `out`; returns its seconds and folder."""
    from wpatch.cli import predict

    shutil.rmtree(out, ignore_errors=True)
    started = time.perf_counter()
    predict(
        [
            "--config",
            str(ROOT / "configs/experiment_a.yaml"),
            "--model.model",
            model,
            "--data.pairs_file",
            "english",
            "--data.limit",
            str(limit),
            "--data.tts",
            "espeak",
            "--trainer.accelerator",
            accelerator,
            "--trainer.enable_progress_bar",
            "false",
            "--writer.output_dir",
            str(out),
            *extra,
        ]
    )
    return round(time.perf_counter() - started, 2), out


def huggingface_check(model_dir: Path, work: Path, limit: int, accelerator: str) -> dict:
    """The bundle's model written as a transformers checkpoint and loaded back (weights equal bit for bit?), then
    the same run from each format: transcripts identical, every number within `HF_TOLERANCE`."""
    import numpy as np
    import torch

    from wpatch.analysis.tables import read_rows
    from wpatch.models.loading import load_model

    bundle = load_model(str(model_dir))
    folder = write_huggingface(bundle, work / "tiny.en-hf")
    loaded = load_model(str(folder)).state_dict()
    same_weights = loaded.keys() == bundle.state_dict().keys() and all(
        torch.equal(loaded[k], v) for k, v in bundle.state_dict().items()
    )
    seconds, rows = {}, {}
    for name, spec in (("bundle", str(model_dir)), ("huggingface", str(folder))):
        seconds[name], out = predict_run(spec, work / "runs" / name, limit, accelerator)
        rows[name] = read_rows(out / "predictions.csv")
    a, b = rows["bundle"], rows["huggingface"]
    numbers = [c for c in a.columns if a[c].dtype.kind == "f"]
    texts = [c for c in a.columns if c not in numbers]
    difference = np.nanmax(np.abs(a[numbers].to_numpy() - b[numbers].to_numpy()))
    return {
        "weights_equal": bool(same_weights),
        "rows": len(a),
        "same_shape": a.shape == b.shape and list(a.columns) == list(b.columns),
        "texts_identical": bool(a[texts].equals(b[texts])),
        "same_missing": bool((a[numbers].isna() == b[numbers].isna()).all().all()),
        "max_abs_difference": float(difference),
        "tolerance": HF_TOLERANCE,
        "seconds": seconds,
        "safetensors_mib": round((folder / "model.safetensors").stat().st_size / 2**20, 1),
    }


def attribution_check(model_dir: Path, work: Path, limit: int, accelerator: str) -> dict:
    """`--model.method atp` with `--model.validate true` on a sample of cells: is the map complete (every item,
    site and block, its windows covering every frame once), the sample patched for real, the validation written;
    each site's Spearman over the patched cells."""
    import pandas as pd

    from wpatch.models.loading import model_dims
    from wpatch.patching.attribution import ENCODER_SITES

    dims = model_dims(str(model_dir))
    atp = ["--model.method", "atp", "--model.directions", "[denoising]", "--model.validate", "true"]
    atp += ["--model.validate_sample", str(ATP_SAMPLE), "--model.verify_top", str(ATP_TOP)]
    seconds, out = predict_run(str(model_dir), work / "runs" / "atp", limit, accelerator, *atp)
    table = pd.read_csv(out / "attributions.csv", keep_default_na=False, na_values=[""])
    summary = json.loads((out / "summary.json").read_text())
    items = pd.read_csv(out / "predictions.csv")["item_id"].nunique()
    maps = table.groupby(["item_id", "patch_direction", "site", "layer"])["frames"].sum()
    sampled = (table["checked"] == "validate").groupby([table["item_id"], table["patch_direction"]]).sum()
    validation = summary.get("atp_validation", {})
    return {
        "seconds": seconds,
        "items": int(items),
        "maps": len(maps),
        "maps_expected": int(items * len(ENCODER_SITES) * dims.n_audio_layer),
        "frames_covered": bool((maps == dims.n_audio_ctx).all()),
        "sampled_per_item": sorted(set(sampled.tolist())),
        "sites_validated": sorted(validation),
        "spearman": {site: found["all"]["spearman"] for site, found in validation.items()},
    }


def attribution_timing(model_dir: Path, limit: int, accelerator: str, real_cells: int) -> dict:
    """`scripts/benchmark_atp.py` on `limit` pairs: the full map's seconds per item, real patching's per cell."""
    from scripts.benchmark_atp import main as benchmark_atp

    return benchmark_atp(
        [
            "--model",
            str(model_dir),
            "--pairs-file",
            "english",
            "--limit",
            str(limit),
            "--tts",
            "espeak",
            "--accelerator",
            accelerator,
            "--real-cells",
            str(real_cells),
        ]
    )


def formats_and_methods(report: dict, check, work: Path, model: Path, limit: int, cpu: bool) -> None:
    """The Hugging Face-format checkpoint beside the bundle's, and the attribution method: small runs (the dry
    run's smaller still), each a check (`check(name, ok, detail)`), their numbers in `report`."""
    accelerator = "cpu" if cpu else "gpu"
    try:
        hf = report["huggingface"] = huggingface_check(model, work, 1 if cpu else min(limit, 16), accelerator)
        check(
            "huggingface checkpoint",
            hf["weights_equal"]
            and hf["same_shape"]
            and hf["texts_identical"]
            and hf["same_missing"]
            and hf["max_abs_difference"] <= hf["tolerance"],
            f"tiny.en written as model.safetensors ({hf['safetensors_mib']} MiB) loads bit for bit "
            f"({hf['weights_equal']}); {hf['rows']} rows: transcripts identical {hf['texts_identical']}, largest "
            f"number difference {hf['max_abs_difference']:.2e} (tolerance {hf['tolerance']:.0e}); predict s "
            + ", ".join(f"{s} ({name})" for name, s in hf["seconds"].items()),
        )
    except (Exception, SystemExit) as error:
        check("huggingface checkpoint", False, f"{type(error).__name__}: {error}"[:300])
    try:
        atp = report["atp"] = attribution_check(model, work, 1 if cpu else min(limit, 8), accelerator)
        check(
            "atp validated run",
            atp["maps"] == atp["maps_expected"]
            and atp["frames_covered"]
            and atp["sampled_per_item"] == [ATP_SAMPLE]
            and len(atp["sites_validated"]) > 0,
            f"{atp['maps']} of {atp['maps_expected']} maps ({atp['items']} items), every frame once "
            f"{atp['frames_covered']}, {ATP_SAMPLE} cells patched per item; Spearman "
            + ", ".join(f"{site} {rho:.2f}" for site, rho in atp["spearman"].items())
            + f"; {atp['seconds']} s",
        )
        timing = report["atp_timing"] = attribution_timing(
            model, 1 if cpu else min(limit, 16), accelerator, 4 if cpu else 64
        )
        check(
            "atp map time",
            timing["map_shape"][0] == timing["items"],
            f"{timing['atp_seconds_per_item']} s per item for the full map ({timing['items']} items), real patching "
            f"{timing['real_seconds_per_cell']} s per cell: the map is {timing['speed_ratio']}x faster",
        )
    except (Exception, SystemExit) as error:
        check("atp", False, f"{type(error).__name__}: {error}"[:300])


def gpu_tests(out: Path, env: dict) -> dict:
    """The GPU-marked tests, counted from their JUnit report."""
    xml = out / "gpu_tests.xml"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-m",
            "gpu",
            "-q",
            "-p",
            "no:cacheprovider",
            "tests/test_gpu.py",
            f"--junitxml={xml}",
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    print(done.stdout[-3000:], done.stderr[-2000:])
    if not xml.is_file():
        return {"tests": 0, "failures": 0, "errors": 1, "skipped": 0, "passed": 0, "returncode": done.returncode}
    suite = ET.parse(xml).getroot()
    suite = suite if suite.tag == "testsuite" else suite[0]
    counts = {k: int(suite.get(k, 0)) for k in ("tests", "failures", "errors", "skipped")}
    return counts | {
        "passed": counts["tests"] - counts["failures"] - counts["errors"] - counts["skipped"],
        "returncode": done.returncode,
    }
