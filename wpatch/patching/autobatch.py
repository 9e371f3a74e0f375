"""The largest batch that fits the GPU (`--data.batch_size auto`).

The decoder's chunk (encoder outputs decoded together) is computed from the model's dimensions: its
cross-attention cache may take `CHUNK_SHARE` of the memory. The source-clip batch is then measured: two
probe steps on the dataset's largest groups (the most items per source clip, the worst case) give the peak
memory per source clip and the fixed part, and the batch is the largest whose extrapolated peak stays
within `SHARE` of the GPU's memory. On the CPU nothing is probed: the fixed defaults are used.
"""

import logging
from contextlib import nullcontext

import torch
from lightning.fabric.utilities.apply_func import move_data_to_device

log = logging.getLogger(__name__)

DEFAULT_BATCH = 16  # source clips per batch when nothing is measured (tiny.en, fp32: well under 16 GB)
SHARE = 0.75  # of the GPU's memory (free plus what this process holds) that a batch's peak may reach
CHUNK_SHARE = 0.15  # of that memory for the decoder's cross-attention caches
MAX_CHUNK = 1024
PROBE_SIZES = (2, 4)


def decode_chunk_for(dims, budget: int, share: float = CHUNK_SHARE) -> int:
    """Encoder outputs per decoder pass whose cross-attention keys and values (fp32, counted twice for the
    attention's temporaries) take at most `share` of `budget` bytes; at least 1, at most `MAX_CHUNK`."""
    per_output = max(1, 2 * 2 * dims.n_text_layer * dims.n_audio_ctx * dims.n_text_state * 4)  # a CTC model: none
    return max(1, min(MAX_CHUNK, int(share * budget // per_output)))


def fit_batch(peaks: dict[int, int], budget: int, n_groups: int) -> int:
    """The largest source-clip batch (at most `n_groups`, at least 1) whose peak memory, extrapolated
    linearly from two probes {source clips: peak bytes}, stays within `budget` bytes."""
    (small, small_peak), (large, large_peak) = sorted(peaks.items())[:2]
    per_clip = max(1.0, (large_peak - small_peak) / (large - small))
    fixed = small_peak - small * per_clip
    return max(1, min(n_groups, int((budget - fixed) // per_clip)))


def autocast_for(precision: str):
    """The autocast context Lightning's `precision` runs the predict step under on CUDA."""
    dtype = {"bf16-mixed": torch.bfloat16, "16-mixed": torch.float16}.get(str(precision))
    return torch.autocast("cuda", dtype=dtype) if dtype else nullcontext()


def peak_memory(module, dm, groups: list[int], precision: str) -> int:
    """Peak CUDA bytes allocated while `module` predicts the batch of these source-clip groups."""
    device = module.device
    batch = move_data_to_device(dm.collate(groups), device)
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    with torch.inference_mode(), autocast_for(precision):
        module.predict_step(batch)
    torch.cuda.synchronize(device)
    peak = torch.cuda.max_memory_allocated(device)
    del batch
    torch.cuda.empty_cache()
    return peak


def largest_groups(dm, n: int) -> list[int]:
    """The `n` source-clip groups with the most items (the costliest batch of that size)."""
    return sorted(range(len(dm.groups)), key=lambda g: -len(dm.groups[g]))[:n]


def auto_batch(module, dm, precision: str) -> tuple[int, int]:
    """(source clips per batch, decode chunk) for `module` on its device; the chunk is set on the module.
    On the CPU: (`DEFAULT_BATCH`, the module's own decode chunk)."""
    device = module.device
    if device.type != "cuda":
        return DEFAULT_BATCH, module.readout.decode_chunk
    free, _ = torch.cuda.mem_get_info(device)
    budget = int(SHARE * (free + torch.cuda.memory_reserved(device)))
    module.use_decode_chunk(decode_chunk_for(module.whisper.dims, budget))
    peaks = {n: peak_memory(module, dm, largest_groups(dm, n), precision) for n in PROBE_SIZES if n <= len(dm.groups)}
    batch = fit_batch(peaks, budget, len(dm.groups)) if len(peaks) == 2 else len(dm.groups)
    log.info(
        "auto batch: %d source clips, decode chunk %d (probe peaks %s MiB, budget %d MiB)",
        batch,
        module.readout.decode_chunk,
        {n: p >> 20 for n, p in peaks.items()},
        budget >> 20,
    )
    return batch, module.readout.decode_chunk
