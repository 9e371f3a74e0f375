"""Time wpatch against the original way of running the experiment, on the same rows, model, clips and machine.

    wpatch benchmark [--limit 16] [--model tiny.en] [--accelerator cpu] [--precision 32-true]

Modes:
  original         per row, a forward hook on encoder.blocks[t] returning the source state (word A's block
                   outputs recorded once per item), then `model.transcribe` of the target clip (what the
                   original notebooks did);
  original-decode  the same hook, then a batch-1 `whisper.decode` with the harness's token cap;
  wpatch           the harness's predict loop (Lightning Trainer.predict) on cached clips and log-mels.
The baselines run on a sample of rows (`--baseline-rows`, `--original-rows`) and are extrapolated per row; the
output says so. The modes are interleaved: `--rounds` rounds, each timing every mode (in a rotating order) on its
own share of the items and of the sampled rows, so that a change in machine load hits every mode alike.
Prints a table and JSON (rows/s, ratios, peak memory, transcript agreement with original-decode), then the
roofline of each precision run (`wpatch.roofline`: every phase's GFLOP/s and its share of a plain matmul of the
block's shape and of the nominal peak, on `--roofline-clips` clips; 0 skips it).
"""

import argparse
import contextlib
import json
import os
import random
import sys
import threading
import time
from contextlib import nullcontext

import lightning as L
import torch
import whisper
from torch.profiler import ProfilerActivity
from torch.profiler import profile as profiler

from datamodules import PairDataModule
from wpatch.allocator import keep_freed_buffers
from wpatch.patching.module import PatchingModule, check_precision
from wpatch.quiet import quiet_lightning
from wpatch.roofline import measure as measure_roofline
from wpatch.stimuli.audio import load_audio


class PeakMemory:
    """Peak resident memory (CPU, sampled every 20 ms) or peak CUDA allocation while the block runs, in MiB."""

    def __init__(self, cuda: bool):
        self.cuda, self.peak = cuda, 0

    def _rss(self) -> int:
        with open("/proc/self/statm") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    def __enter__(self):
        if self.cuda:
            torch.cuda.reset_peak_memory_stats()
        self.running, self.peak = True, self._rss()
        self.thread = threading.Thread(target=self._sample, daemon=True)
        self.thread.start()
        return self

    def _sample(self):
        while self.running:
            self.peak = max(self.peak, self._rss())
            time.sleep(0.02)

    def __exit__(self, *exc):
        self.running = False
        self.thread.join()
        self.mib = (torch.cuda.max_memory_allocated() if self.cuda else self.peak) / 2**20


def block_outputs(encoder, mel: torch.Tensor) -> list[torch.Tensor]:
    """Every encoder block's output for `mel`, recorded with plain forward hooks, as the original did."""
    outputs = []
    handles = [block.register_forward_hook(lambda _m, _i, out: outputs.append(out)) for block in encoder.blocks]
    try:
        encoder(mel)
    finally:
        for handle in handles:
            handle.remove()
    return outputs


@contextlib.contextmanager
def output_patch(module: torch.nn.Module, replacement: torch.Tensor):
    """The original's patch: a forward hook that makes `module` return `replacement`; removed on exit."""
    handle = module.register_forward_hook(lambda _m, _i, output: replacement.to(output.dtype).expand_as(output))
    try:
        yield
    finally:
        handle.remove()


def baseline(
    mode: str, module: PatchingModule, dm: PairDataModule, rows: list[tuple[int, int, int]], device
) -> tuple[float, list[str]]:
    """Seconds and transcripts for `rows` (item index, s, t), one hooked pass per row as the original did."""
    model, items = module.whisper, dm.items
    options = whisper.DecodingOptions(
        language=module.hparams.language, fp16=False, without_timestamps=True, sample_len=module.hparams.max_tokens
    )
    transcripts, recorded = [], {}
    start = time.perf_counter()
    for item, s, t in rows:
        target_clip = items.target_clip[item]
        with torch.no_grad():
            if item not in recorded:  # word A's block outputs, recorded once per item as the original did
                recorded[item] = block_outputs(model.encoder, dm.mels[items.source_clip[item]][None].to(device))
            with output_patch(model.encoder.blocks[t], recorded[item][s]):
                if mode == "original":  # fp16 on a GPU, as openai-whisper's transcribe defaults to
                    text = model.transcribe(
                        load_audio(dm.clip_paths[target_clip]),
                        language=module.hparams.language,
                        fp16=device.type == "cuda",
                        verbose=None,
                    )["text"]
                else:
                    text = whisper.decode(model, dm.mels[target_clip][None].to(device), options)[0].text
        transcripts.append(text.strip())
    return time.perf_counter() - start, transcripts


def run_wpatch(
    module: PatchingModule, dm: PairDataModule, accelerator: str, precision: str, device, profile: bool = False
) -> tuple[float, float, dict]:
    """Seconds, peak MiB and {(item, s, t): (transcript, score)} of the harness's predict loop; with `profile`,
    prints where the time went (the module's wpatch.* phases; the rest is data, Lightning and Python).
    The batch size and decode chunk it ran with are left in `dm.resolved_batch_size`, `module.hparams.decode_chunk`."""
    trainer = L.Trainer(
        accelerator=accelerator,
        devices=1,
        precision=precision,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with (
        PeakMemory(device.type == "cuda") as memory,
        profiler(activities=activities) if profile else nullcontext() as prof,
    ):
        start = time.perf_counter()
        batches = trainer.predict(module, datamodule=dm)
        seconds = time.perf_counter() - start
    if profile:
        phases = {e.key: e.cpu_time_total / 1e6 for e in prof.key_averages() if e.key.startswith("wpatch.")}
        print(f"profile of {seconds:.1f} s of predict ({precision}):")
        for key, value in sorted(phases.items(), key=lambda kv: -kv[1]):
            print(f"  {key:<26} {value:8.1f} s  {100 * value / seconds:5.1f}%")
        rest = seconds - sum(phases.values())
        print(f"  {'data, Lightning, Python':<26} {rest:8.1f} s  {100 * rest / seconds:5.1f}%")
    rows = {
        (r["item_id"], r["source_layer"], r["target_layer"]): (r["transcript"], r["score"])
        for batch in batches
        for r in batch
    }
    return seconds, memory.mib, rows


def interleaved(modes: list[str], sample, module, dm, args, device, progress) -> tuple[dict, dict]:
    """Time the modes in `args.rounds` rounds, each on its own share of the items (whole source-clip groups) and of
    the sampled rows, the modes in a rotating order, so that a change in machine load hits every mode alike.

    Returns per mode its rows timed, seconds, peak MiB, whether it is a sample and the transcripts of its sampled
    rows (in `sample` order; wpatch's of every sampled row), and wpatch's rows ({(item, s, t): (transcript, score)})."""
    rounds = max(1, min(args.rounds, len(dm.groups)))
    timed = {
        "original": sorted(random.Random(1).sample(sample, min(args.original_rows, len(sample)))),
        "original-decode": sample,
    }
    totals = {mode: {"rows": 0, "seconds": 0.0, "peak_mib": 0.0, "sampled": mode != "wpatch"} for mode in modes}
    wpatch_rows, transcripts = {}, {mode: {} for mode in timed}
    everything = set(range(len(dm.items)))
    for r in range(rounds):
        items = {i for group in dm.groups[r::rounds] for i in group}
        for mode in modes[r % len(modes) :] + modes[: r % len(modes)]:
            if mode == "wpatch":
                dm.skip(everything - items)
                rows = len(items) * len(module.layer_pairs)
                profile = args.profile and r == 0
                seconds, peak, done = run_wpatch(module, dm, args.accelerator, args.precision, device, profile)
                wpatch_rows.update(done)
                totals[mode].update(batch_size=dm.resolved_batch_size, decode_chunk=module.hparams.decode_chunk)
            else:
                mine = [row for row in timed[mode] if row[0] in items]
                if not mine:
                    continue
                module.whisper.to(device)
                with PeakMemory(device.type == "cuda") as memory:
                    seconds, texts = baseline(mode, module, dm, mine, device)
                rows, peak = len(mine), memory.mib
                transcripts[mode].update(zip(mine, texts))
            total = totals[mode]
            total.update(rows=total["rows"] + rows, seconds=total["seconds"] + seconds)
            total["peak_mib"] = max(total["peak_mib"], peak)
            progress(f"round {r + 1}/{rounds}, {mode}: {rows} rows in {seconds:.1f} s ({rows / seconds:.2f} rows/s)")
    dm.skip(set())
    for mode, total in totals.items():
        if mode == "wpatch":
            total.update(transcripts=[wpatch_rows[k][0] for k in sample], rows_returned=len(wpatch_rows))
        else:
            total["transcripts"] = [transcripts[mode][k] for k in timed[mode]]
    return totals, wpatch_rows


def arguments() -> argparse.ArgumentParser:
    """The benchmark's options (`--help`)."""
    parser = argparse.ArgumentParser(
        prog="wpatch benchmark", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default="tiny.en")
    parser.add_argument("--pairs-file", default=None)
    parser.add_argument("--limit", type=int, default=16, help="pairs (x2 directions)")
    parser.add_argument("--tts", default="espeak")
    parser.add_argument(
        "--batch-size",
        type=lambda v: v if v == "auto" else int(v),
        default=8,
        help="source clips per batch, or auto (the largest that fits the GPU)",
    )
    parser.add_argument("--accelerator", default="cpu")
    parser.add_argument("--precision", default="32-true")
    parser.add_argument("--baseline-rows", type=int, default=48, help="rows timed for each baseline (extrapolated)")
    parser.add_argument(
        "--original-rows",
        type=int,
        default=8,
        help="rows timed for `original` (model.transcribe per row: the slowest), from the same sample",
    )
    parser.add_argument("--modes", default="original,original-decode,wpatch")
    parser.add_argument(
        "--rounds",
        type=int,
        default=3,
        help="rounds, each timing every mode on its own share of the items, so load changes hit all modes alike",
    )
    parser.add_argument(
        "--compare-precision",
        default=None,
        help=(
            "also run wpatch under these precisions (comma-separated, e.g. bf16-mixed,16-mixed) and report each "
            "one's agreement with fp32"
        ),
    )
    parser.add_argument("--profile", action="store_true", help="print where wpatch's predict time goes")
    parser.add_argument(
        "--roofline-clips",
        type=int,
        default=2,
        help="clips the roofline (each phase's GFLOP/s against the matmul ceiling and nominal peak) runs on; 0 skips",
    )
    parser.add_argument("--json-out", default=None)
    return parser


def main(argv: list[str] | None = None) -> dict:
    """Run the benchmark; prints the table and JSON and returns the report."""
    quiet_lightning()
    keep_freed_buffers()  # before any mode runs, so that every mode allocates alike
    args = arguments().parse_args(argv)
    compared = args.compare_precision.split(",") if args.compare_precision else []
    for precision in [args.precision, *compared]:
        check_precision(precision, args.accelerator in ("gpu", "cuda"))
    device = torch.device("cuda" if args.accelerator in ("gpu", "cuda") else "cpu")
    modes = args.modes.split(",")

    dm = PairDataModule(
        pairs_file=args.pairs_file, limit=args.limit, model=args.model, tts=args.tts, batch_size=args.batch_size
    )
    dm.prepare_data()
    dm.setup("predict")
    module = PatchingModule(model=args.model)
    n_rows = len(dm.items) * len(module.layer_pairs)
    sample = sorted(
        random.Random(0).sample(
            [(i, s, t) for i in range(len(dm.items)) for s, t in module.layer_pairs], min(args.baseline_rows, n_rows)
        )
    )

    def progress(message: str) -> None:
        print(f"[benchmark {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)

    progress(
        f"{len(dm.items)} items x {len(module.layer_pairs)} layer pairs = {n_rows} rows; modes {', '.join(modes)}; "
        f"{args.rounds} rounds"
    )
    results, rows = interleaved(modes, sample, module, dm, args, device, progress)
    agreement = {}
    if compared:
        reference = (
            rows
            if args.precision == "32-true" and "wpatch" in modes
            else run_wpatch(module, dm, args.accelerator, "32-true", device)[2]
        )
        for precision in compared:
            seconds, peak, mixed = run_wpatch(module, dm, args.accelerator, precision, device)
            agreement[precision] = {
                "rows_per_s": n_rows / seconds,
                "seconds": round(seconds, 2),
                "peak_mib": round(peak),
                "rows_returned": len(mixed),
                "batch_size": dm.resolved_batch_size,
                "decode_chunk": module.hparams.decode_chunk,
                "identical_transcripts": sum(mixed[k][0] == reference[k][0] for k in reference) / n_rows,
                "mean_abs_score_difference": sum(abs(mixed[k][1] - reference[k][1]) for k in reference) / n_rows,
            }

    report = {
        "device": torch.cuda.get_device_name()
        if device.type == "cuda"
        else f"cpu ({os.cpu_count()} cores, {torch.get_num_threads()} threads)",
        "model": args.model,
        "pairs_file": args.pairs_file or "starter",
        "precision": args.precision,
        "items": len(dm.items),
        "items_per_source_clip": round(len(dm.items) / len(dm.groups), 2),
        "layer_pairs": len(module.layer_pairs),
        "rows": n_rows,
        "modes": {
            m: {
                "rows_per_s": r["rows"] / r["seconds"],
                "rows_timed": r["rows"],
                "seconds": round(r["seconds"], 2),
                "extrapolated": r["sampled"],
                "peak_mib": round(r["peak_mib"]),
            }
            | {k: r[k] for k in ("rows_returned", "batch_size", "decode_chunk") if k in r}
            for m, r in results.items()
        },
    }
    if "wpatch" in results:
        for mode in ("original", "original-decode"):
            if mode in results:
                report["modes"][mode]["wpatch_speedup"] = round(
                    report["modes"]["wpatch"]["rows_per_s"] / report["modes"][mode]["rows_per_s"], 2
                )
        if "original-decode" in results:
            same = sum(
                a == b for a, b in zip(results["wpatch"]["transcripts"], results["original-decode"]["transcripts"])
            )
            report["identical_transcripts_vs_original_decode"] = f"{same}/{len(sample)}"
    if agreement:
        report["precision_agreement"] = agreement
    rooflines = []
    if args.roofline_clips > 0:
        module.whisper.to(device)
        mels = dm.mels[: args.roofline_clips].to(device)
        language, max_tokens = module.hparams.language or "en", module.hparams.max_tokens
        for precision in [args.precision, *compared]:
            progress(f"roofline, {precision}, on {len(mels)} clips")
            rooflines.append(measure_roofline(module.whisper, mels, language, max_tokens, precision))
        report["roofline"] = {p: r.as_dict() for p, r in zip([args.precision, *compared], rooflines)}
    print(f"{'mode':<16} {'rows/s':>9} {'timed rows':>11} {'seconds':>8} {'peak MiB':>9} {'wpatch x':>9}")
    for mode, r in report["modes"].items():
        note = " (sample, extrapolated per row)" if r["extrapolated"] else ""
        print(
            f"{mode:<16} {r['rows_per_s']:>9.2f} {r['rows_timed']:>11} {r['seconds']:>8} {r['peak_mib']:>9} "
            f"{r.get('wpatch_speedup', ''):>9}{note}"
        )
    for precision, a in agreement.items():
        print(
            f"{precision}: {a['rows_per_s']:.2f} rows/s, {a['seconds']} s, peak {a['peak_mib']} MiB; against fp32 "
            f"{100 * a['identical_transcripts']:.1f}% "
            f"identical transcripts, mean |score difference| {a['mean_abs_score_difference']:.4f}"
        )
    for roofline in rooflines:
        print("\n".join(roofline.lines()))
    print(json.dumps(report, indent=2))
    if args.json_out:
        with open(args.json_out, "w") as out:
            json.dump(report, out, indent=2)
    return report
