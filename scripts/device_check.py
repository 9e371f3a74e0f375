"""The GPU check, for a machine with an NVIDIA GPU and no internet, and its CPU dry run (docs/device_check.md).

    python scripts/device_check.py pack       # where there is internet: build .device/ (weights in two parts, wheels)
    python3 scripts/device_check.py stage     # on the GPU machine, after load 1 (checkout + .device/part1)
    python3 scripts/device_check.py run       # on the GPU machine, after load 2 (checkout + .device/part2, wheels)
    python scripts/device_check.py dry-run    # CI: all of the above here, on the CPU, on 2 pairs

Where one transfer to the GPU machine may carry only so much (`--transfer-limit`, default 64 MiB, the checkout
included), the bundle travels in two loads: tiny.en's model.bin is 75.5 MB of fp16 values that no lossless coder
brings under about 62 MB, leaving too little room for the wheels (openai-whisper, more-itertools, espeakng-loader,
soundfile, cffi, pycparser, safetensors: about 13 MB). So model.bin travels as two plain halves: `stage` keeps the
first on the machine's disk (--machine, default /tmp/wpatch-device), `run` takes the second and the wheels, joins
and verifies the sha256, and runs: the benchmark on all of Experiment A in fp32, bf16-mixed and 16-mixed (with each
one's agreement with fp32 and the original's way on a sample of rows), the automatic batch size, the peak memory of
the fixed default batch, tiny.en from a Hugging Face-format checkpoint beside the bundle's, the attribution method (a
validated run, the map's time per item; `scripts.device_checks`), and the GPU-marked tests; the summary carries the
benchmark's roofline (each phase against the matmul ceiling and the datasheet peak). It writes report.json,
summary.md and gpu_tests.xml to the results folder (--out, default the OUT environment variable), prints the summary
table last and exits 1 if a check failed. Where one transfer can carry everything, copy the checkout and the whole
.device/ at once and run `stage` then `run`. Only the standard library is imported before the wheels are installed.
"""

import argparse
import hashlib
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BUNDLE = ROOT / ".device"
MACHINE_DIR = Path("/tmp/wpatch-device")  # on the GPU machine: part 1 between the two loads, the wheels, the work
LIMIT = 64 * 2**20  # what one transfer may carry by default, the checkout included (--transfer-limit)
WHEELS = ("openai-whisper", "more-itertools", "espeakng-loader", "soundfile", "cffi", "pycparser", "safetensors")
DEVICE_PYTHON = "3.12"
PLATFORMS = (
    "manylinux_2_28_x86_64",
    "manylinux_2_27_x86_64",
    "manylinux_2_17_x86_64",
    "manylinux2014_x86_64",
    "manylinux1_x86_64",
)
NEEDED_THERE = (
    "torch",
    "torchaudio",
    "lightning",
    "numba",
    "tiktoken",
    "regex",
    "tqdm",
    "numpy",
    "pandas",
    "seaborn",
    "matplotlib",
    "tensorboard",
    "pytest",
)
DEFAULT_BATCH_LIMIT = 15 * 2**30  # the fixed default batch's peak must leave a 16 GB GPU room for its context
TARGETS = {"bf16_predict_s": 10.0, "speedup_vs_original": 300.0, "fp16_identical": 0.99}


def fail(message: str, code: int = 2):
    print(f"device_check: {message}", file=sys.stderr)
    raise SystemExit(code)


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as src:
        while chunk := src.read(1 << 22):
            digest.update(chunk)
    return digest.hexdigest()


def tree_bytes(root: Path) -> int:
    """Bytes of the checkout as it travels (what git lists: tracked and untracked-not-ignored files)."""
    try:
        listed = subprocess.run(
            ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
            cwd=root,
            capture_output=True,
            check=True,
        ).stdout
    except (OSError, subprocess.CalledProcessError):
        fail(f"{root} is not a git checkout; the travelling size is counted from git's file lists")
    return sum((root / name).stat().st_size for name in listed.decode().split("\0") if name and (root / name).is_file())


def folder_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def pip(*args: str) -> None:
    done = subprocess.run([sys.executable, "-m", "pip", *args], capture_output=True, text=True, check=False)
    if done.returncode:
        fail(f"pip {args[0]} failed: {(done.stderr or done.stdout).strip().splitlines()[-1]}")


def download_wheels(target: Path, python: str | None) -> None:
    """The installed versions of `WHEELS`, as wheels for `python` on x86-64 Linux (None: this interpreter)."""
    from importlib.metadata import version

    target.mkdir(parents=True, exist_ok=True)
    pins = {name: version(name) for name in WHEELS}
    where = (
        ["--python-version", python, "--implementation", "cp", *[f"--platform={p}" for p in PLATFORMS]]
        if python
        else []
    )
    binary = [f"{n}=={v}" for n, v in pins.items() if n != "openai-whisper"]
    pip("download", "-q", "--no-deps", "--only-binary=:all:", *where, "-d", str(target), *binary)
    pip(
        "wheel", "-q", "--no-deps", "-w", str(target), f"openai-whisper=={pins['openai-whisper']}"
    )  # PyPI has only its sdist; pure Python


def pack(bundle: Path, python: str | None = DEVICE_PYTHON, limit: int = LIMIT) -> dict:
    """Build `bundle`: part1/ and part2/ (the two halves of tiny.en's model.bin, each with the manifest), and
    wheels/; check that each load, with the checkout, fits one transfer of `limit` bytes. Returns the sizes."""
    from wpatch.models.loading import bundle_directory

    source = bundle_directory("tiny.en")
    if source is None:
        fail("tiny.en's offline bundle is not installed here; pip install -e '.[offline]'")
    shutil.rmtree(bundle, ignore_errors=True)
    data = (source / "model.bin").read_bytes()
    half = len(data) // 2
    manifest = {
        "model_bin_sha256": hashlib.sha256(data).hexdigest(),
        "model_bin_bytes": len(data),
        "part1_sha256": hashlib.sha256(data[:half]).hexdigest(),
        "config": json.loads((source / "config.json").read_text()),
    }
    for part, chunk in (("part1", data[:half]), ("part2", data[half:])):
        (bundle / part).mkdir(parents=True)
        (bundle / part / f"model.bin.{part}").write_bytes(chunk)
        (bundle / part / "manifest.json").write_text(json.dumps(manifest, indent=1))
    download_wheels(bundle / "wheels", python)
    tree = tree_bytes(ROOT)
    sizes = {
        "repo": tree,
        "part1": folder_bytes(bundle / "part1"),
        "part2": folder_bytes(bundle / "part2"),
        "wheels": folder_bytes(bundle / "wheels"),
    }
    sizes["load1"] = tree + sizes["part1"]
    sizes["load2"] = tree + sizes["part2"] + sizes["wheels"]
    for load in ("load1", "load2"):
        mib, most = sizes[load] / 2**20, limit / 2**20
        print(f"load {load[-1]} carries {mib:.1f} MiB of the {most:.0f} MiB one transfer may carry")
        if sizes[load] > limit:
            fail(
                f"load {load[-1]} would carry {mib:.1f} MiB, over the {most:.0f} MiB one transfer may carry "
                "(--transfer-limit); shrink the checkout or the bundle"
            )
    print(json.dumps({k: f"{v / 2**20:.2f} MiB" for k, v in sizes.items()}))
    return sizes


def stage(bundle: Path, machine: Path) -> None:
    """On the GPU machine, after load 1: verify part 1 and keep it on the machine's disk for `run`."""
    part = bundle / "part1"
    manifest = json.loads((part / "manifest.json").read_text())
    if sha256(part / "model.bin.part1") != manifest["part1_sha256"]:
        fail("part 1 of model.bin arrived damaged (sha256 differs); run `python scripts/device_check.py pack` again")
    (machine / "stage").mkdir(parents=True, exist_ok=True)
    shutil.copy2(part / "model.bin.part1", machine / "stage" / "model.bin.part1")
    print(
        f"staged part 1 in {machine / 'stage'}; bring load 2 (the checkout, .device/part2 and .device/wheels) and "
        "run `python3 scripts/device_check.py run` (part 1 stays there as long as that folder is kept)"
    )


def restore(stage_file: Path, part2: Path, target: Path) -> str:
    """Join the two halves into `target`/model.bin (+ config.json) and verify the whole file's sha256."""
    manifest = json.loads((part2 / "manifest.json").read_text())
    if not stage_file.is_file():
        fail(
            f"part 1 of the weights is not on this machine ({stage_file}): it was not staged, or was removed "
            "between the two loads; bring load 1 and run `stage` again, then `run`"
        )
    target.mkdir(parents=True, exist_ok=True)
    with open(target / "model.bin", "wb") as out:
        for piece in (stage_file, part2 / "model.bin.part2"):
            out.write(piece.read_bytes())
    digest = sha256(target / "model.bin")
    if digest != manifest["model_bin_sha256"]:
        fail(
            f"the joined model.bin has sha256 {digest[:12]}..., not {manifest['model_bin_sha256'][:12]}...; pack "
            "again and bring both loads again"
        )
    (target / "config.json").write_text(json.dumps(manifest["config"]))
    return digest


def _synthesise(key: tuple[str, str, str]) -> None:
    from wpatch.stimuli.tts import ClipCache, Espeak

    root, word, lang = key
    ClipCache(root, Espeak()).get(word, lang)


def synthesise(pairs_file: str, limit: int, root: Path) -> tuple[int, int]:
    """Every clip of the pairs, in parallel (each in a fresh engine, as the clip cache makes them);
    returns (clips wanted, clips in the cache)."""
    from wpatch.stimuli.pairs_file import patch_items, read_pairs
    from wpatch.stimuli.tts import ClipCache, Espeak

    items = patch_items(read_pairs(pairs_file, limit), True)
    words = sorted({(side.word, side.lang) for role in ("source", "target") for side in items[role]})
    with ProcessPoolExecutor(os.cpu_count()) as pool:
        list(pool.map(_synthesise, [(str(root), w, lang) for w, lang in words]))
    cache = ClipCache(root, Espeak())
    return len(words), sum(cache.path(w, lang).is_file() for w, lang in words)


def run(bundle: Path, machine: Path, out: Path, cpu: bool, limit: int) -> int:
    """On the GPU machine, after load 2 (or the dry run's second step): install, restore, run every check, write
    the results to `out`."""
    started = time.perf_counter()
    missing = [name for name in NEEDED_THERE if importlib.util.find_spec(name) is None]
    if missing:
        fail(f"this machine lacks {', '.join(missing)}; add their wheels to .device/wheels (docs/device_check.md)")
    site, work = machine / "site", machine / "work"
    model = work / "tiny.en"
    digest = restore(machine / "stage" / "model.bin.part1", bundle / "part2", model)
    pip(
        "install",
        "-q",
        "--no-index",
        "--no-deps",
        "--no-compile",
        "--no-cache-dir",
        "--upgrade",
        "--target",
        str(site),
        *map(str, sorted((bundle / "wheels").glob("*.whl"))),
    )
    sys.path[:0] = [str(site), str(ROOT)]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), str(ROOT)]), "WPATCH_CACHE": str(work / "cache")}
    os.environ["WPATCH_CACHE"] = env["WPATCH_CACHE"]
    out.mkdir(parents=True, exist_ok=True)
    checks, report = [], {"device": "cpu (dry run)" if cpu else None, "limit_pairs": limit}

    def check(name: str, ok: bool, detail: str) -> None:
        checks.append({"check": name, "ok": bool(ok), "detail": detail})
        print(f"[{'PASS' if ok else 'FAIL'}] {name}: {detail}", flush=True)

    check("weights", True, f"tiny.en model.bin joined from the two parts, sha256 {digest[:16]}... as packed")

    import torch

    if not cpu and not torch.cuda.is_available():
        fail("no CUDA device is visible; run the dry run (`dry-run`) on a machine without a GPU")
    report["device"] = report["device"] or torch.cuda.get_device_name()

    def save() -> None:  # after each step, so a run stopped at its time limit still returns what it did
        report["checks"], report["seconds"] = checks, round(time.perf_counter() - started, 1)
        (out / "report.json").write_text(json.dumps(report, indent=1))

    t = time.perf_counter()
    wanted, made = synthesise("english", limit, work / "cache" / "clips")
    check("clips", made == wanted, f"{made} of {wanted} espeak clips synthesised in {time.perf_counter() - t:.1f} s")
    save()

    from scripts.device_checks import default_batch_peaks, formats_and_methods, gpu_tests
    from wpatch.benchmark import main as benchmark

    # the CPU dry run keeps to fp32 and the batch-1 decode baseline: the CPU's bfloat16 and `transcribe`'s
    # temperature fallback take minutes there, and their GPU paths (autocast on CUDA, fp16) cannot run on it
    args = [
        "--model",
        str(model),
        "--pairs-file",
        "english",
        "--limit",
        str(limit),
        "--precision",
        "32-true",
        "--batch-size",
        "auto",
        "--json-out",
        str(out / "benchmark.json"),
    ]
    args += (
        ["--accelerator", "cpu", "--modes", "wpatch,original-decode", "--baseline-rows", "2"]
        if cpu
        else [
            "--accelerator",
            "gpu",
            "--compare-precision",
            "bf16-mixed,16-mixed",
            "--baseline-rows",
            "32",
            "--roofline-clips",
            "8",
        ]
    )
    print("benchmark", " ".join(args), flush=True)
    bench, runs = None, {}
    try:
        bench = report["benchmark"] = benchmark(args)
    except Exception as error:  # recorded as a failed check; the GPU tests still run
        check("benchmark", False, f"{type(error).__name__}: {error}"[:300])
    if bench:
        expected = bench["items"] * bench["layer_pairs"]
        runs = {"32-true": bench["modes"]["wpatch"]} | bench.get("precision_agreement", {})
        for precision, r in runs.items():
            check(
                f"rows {precision}",
                r["rows_returned"] == expected,
                f"{r['rows_returned']} of {expected} rows, batch {r['batch_size']} clips, decode chunk "
                f"{r['decode_chunk']}",
            )
        same, sampled = map(int, bench["identical_transcripts_vs_original_decode"].split("/"))
        check(
            "fp32 vs original-decode",
            same >= 0.95 * sampled,
            f"{same}/{sampled} sampled rows transcribed identically (the hook reference)",
        )
    save()

    if not cpu:
        try:
            peaks, total = default_batch_peaks(str(model), "english", limit, ["32-true", "bf16-mixed", "16-mixed"])
            report["default_batch_peak_mib"] = {p: v >> 20 for p, v in peaks.items()}
            worst = max(peaks.values())
            check(
                "default batch on 16 GB",
                worst < DEFAULT_BATCH_LIMIT,
                f"peak {worst / 2**30:.2f} GiB at 16 clips, chunk 64 (worst precision; limit 15 GiB; this GPU "
                f"{total / 2**30:.0f} GiB)",
            )
        except Exception as error:
            check("default batch on 16 GB", False, f"{type(error).__name__}: {error}"[:300])
        save()

    formats_and_methods(report, check, work, model, limit, cpu)
    save()

    tests = gpu_tests(out, env)
    report["gpu_tests"] = tests
    if cpu:
        check(
            "gpu tests",
            tests["returncode"] in (0, 5) and tests["skipped"] == tests["tests"] > 0,
            f"{tests['tests']} collected, all skipped without CUDA",
        )
    else:
        check(
            "gpu tests",
            tests["returncode"] == 0 and tests["passed"] == tests["tests"] > 0,
            f"{tests['passed']} of {tests['tests']} passed",
        )

    save()
    summary = summarise(report, runs, bench)
    (out / "summary.md").write_text(summary)
    print("\n" + summary)
    return 0 if all(c["ok"] for c in checks) else 1


def summarise(report: dict, runs: dict, bench: dict | None) -> str:
    """The summary table (markdown): checks, the three precisions, the baselines, the targets, the rooflines."""
    from wpatch.roofline import Roofline

    lines = [
        f"device check on {report['device']}: tiny.en, english pairs (limit {report['limit_pairs']}), "
        f"{report['seconds']} s",
        "",
        "| check | result | detail |",
        "|---|---|---|",
    ]
    lines += [f"| {c['check']} | {'PASS' if c['ok'] else 'FAIL'} | {c['detail']} |" for c in report["checks"]]
    if bench is None:
        return "\n".join(lines) + "\n"
    lines[0] += f", {bench['rows']} rows"
    lines += [
        "",
        "| mode | predict s | rows/s | peak MiB | batch | chunk | identical to fp32 | mean abs score diff |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for precision, r in runs.items():
        agree = (
            (f"{100 * r['identical_transcripts']:.1f}%", f"{r['mean_abs_score_difference']:.4f}")
            if "identical_transcripts" in r
            else ("(reference)", "")
        )
        lines.append(
            f"| wpatch {precision} | {r['seconds']} | {r['rows_per_s']:.1f} | {r['peak_mib']} | {r['batch_size']} | "
            f"{r['decode_chunk']} | {agree[0]} | {agree[1]} |"
        )
    for mode in [m for m in ("original", "original-decode") if m in bench["modes"]]:
        r = bench["modes"][mode]
        lines.append(
            f"| {mode} ({r['rows_timed']} rows, extrapolated) | {r['seconds']} | {r['rows_per_s']:.2f} | "
            f"{r['peak_mib']} | 1 | | fp32 wpatch is {r['wpatch_speedup']}x | |"
        )
    if "16-mixed" in runs:
        bf16, fp16, original = runs["bf16-mixed"], runs["16-mixed"], bench["modes"]["original"]["rows_per_s"]
        best = max(("bf16-mixed", "16-mixed"), key=lambda p: runs[p]["identical_transcripts"])
        lines += [
            "",
            "| target | wanted | measured | met |",
            "|---|---|---|---|",
            f"| bf16-mixed predict time | <= {TARGETS['bf16_predict_s']} s | {bf16['seconds']} s | "
            f"{bf16['seconds'] <= TARGETS['bf16_predict_s']} |",
            f"| bf16-mixed vs original | >= {TARGETS['speedup_vs_original']:.0f}x | "
            f"{bf16['rows_per_s'] / original:.0f}x | "
            f"{bf16['rows_per_s'] / original >= TARGETS['speedup_vs_original']} |",
            f"| 16-mixed identical to fp32 | >= {100 * TARGETS['fp16_identical']:.0f}% | "
            f"{100 * fp16['identical_transcripts']:.1f}% | "
            f"{fp16['identical_transcripts'] >= TARGETS['fp16_identical']} |",
            f"| better mixed precision (the GPU default to choose) | | {best} | |",
        ]
    for saved in bench.get("roofline", {}).values():
        lines += ["", *Roofline.from_dict(saved).markdown()]
    if "default_batch_peak_mib" in report:
        lines += [
            "",
            "fixed default batch (16 clips, chunk 64), peak MiB: "
            + ", ".join(f"{p} {v}" for p, v in report["default_batch_peak_mib"].items()),
        ]
    return "\n".join(lines) + "\n"


def dry_run(out: Path, limit: int, transfer_limit: int = LIMIT) -> int:
    """Pack (wheels for this interpreter), then the two GPU-machine steps here on the CPU, as subprocesses."""
    with tempfile.TemporaryDirectory(prefix="wpatch-dry-") as tmp:
        bundle, machine = Path(tmp) / "bundle", Path(tmp) / "machine"
        pack(bundle, python=None, limit=transfer_limit)
        script = [sys.executable, str(Path(__file__).resolve())]
        common = ["--bundle", str(bundle), "--machine", str(machine)]
        env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
        subprocess.run([*script, "stage", *common], check=True, env=env)
        return subprocess.run(
            [*script, "run", *common, "--cpu", "--limit", str(limit), "--out", str(out)], env=env, check=False
        ).returncode


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("step", choices=("pack", "stage", "run", "dry-run"))
    parser.add_argument("--bundle", type=Path, default=BUNDLE, help="the travelling bundle (default .device/)")
    parser.add_argument(
        "--machine", type=Path, default=MACHINE_DIR, help="where the GPU machine keeps part 1, the wheels and the work"
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=Path(os.environ["OUT"]) if os.environ.get("OUT") else None,
        help="the results folder (default: the OUT environment variable)",
    )
    parser.add_argument("--cpu", action="store_true", help="run on the CPU (the dry run)")
    parser.add_argument(
        "--transfer-limit",
        type=float,
        default=LIMIT / 2**20,
        help="MiB one transfer to the GPU machine may carry, the checkout included (pack; default 64)",
    )
    parser.add_argument(
        "--limit", type=int, default=None, help="pairs of Experiment A (default all 869; the dry run 2)"
    )
    args = parser.parse_args(argv)
    if args.step == "pack":
        sys.path.insert(0, str(ROOT))
        pack(args.bundle, limit=args.transfer_limit * 2**20)
        return 0
    if args.step == "stage":
        stage(args.bundle, args.machine)
        return 0
    if args.out is None:
        fail("no results folder: give --out DIR (or set the OUT environment variable)")
    if args.step == "dry-run":
        sys.path.insert(0, str(ROOT))
        return dry_run(args.out, args.limit or 2, args.transfer_limit * 2**20)
    return run(args.bundle, args.machine, args.out, args.cpu, args.limit or 869)


if __name__ == "__main__":
    sys.exit(main())
