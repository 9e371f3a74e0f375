"""What a run will do, said in one block before any clip is made or model runs: model, pairs file, items x patches
per item = rows, sites and windows, device and precision, output folder (printed by `wpatch.cli.run_predict`).

The items are counted from the pairs file (each pair once per direction and voice); a run that keeps only heard
clips (`--data.require_heard`) or runs one shard learns its final count after screening, and the block says so.
"""

import lightning as L

from wpatch.stimuli.pairs_file import PACKAGED, pairs_path, patch_items
from wpatch.stimuli.voice_choice import BEST


def plan_block(trainer: L.Trainer, module: L.LightningModule, data: L.LightningDataModule, output_dir) -> str:
    """The plan's lines (see the module docstring)."""
    model, hp = module.hparams, data.hparams
    pairs = data.read_pairs()
    items = len(patch_items(pairs, hp.bidirectional)) * len(data.speakers)
    per_item = module.rows_per_item
    name = hp.pairs_file or "starter"
    named = f"{name} ({pairs_path(name)})" if name in PACKAGED else name
    directions = "both directions" if hp.bidirectional else "word A into word B only"
    count = f"{items} items x {per_item} patches per item = {items * per_item} rows"
    if hp.require_heard != "none":
        count += f" at most (items whose {hp.require_heard} clips the model does not hear are dropped)"
    if data.shard is not None:
        count += f" in the whole run; shard {hp.shard} runs its share"
    layers = f"{len(module.layer_pairs)} encoder layer pairs"
    if module.decoder_layer_pairs:
        layers += f", {len(module.decoder_layer_pairs)} decoder layer pairs"
    windows = [w if isinstance(w, str) else f"{w[0]}-{w[1]}" for w in model.windows]
    sweep = f"; sweep {list(model.sweep)} (width, stride, end)" if model.sweep else ""
    dims = module.whisper.dims
    lines = {
        "model": f"{model.model} ({dims.n_audio_layer} encoder blocks, {dims.n_text_layer} decoder blocks)",
        "pairs": f"{named}: {len(pairs)} pairs, {directions}, voices {', '.join(data.speakers)}"
        + (" (best: per word, the first offline voice the model hears)" if BEST in data.speakers else ""),
        "rows": count,
        "patches": f"method {model.method}; sites {', '.join(model.sites)}; windows {', '.join(windows)}{sweep}; "
        f"{layers}; alphas {', '.join(map(str, model.alphas))}; {', '.join(model.directions)}"
        + ("; plus control donors" if model.control else ""),
        "device": f"{type(trainer.accelerator).__name__.removesuffix('Accelerator').lower()} x "
        f"{trainer.num_devices * trainer.num_nodes}, precision {trainer.precision}, batch size {hp.batch_size}",
        "output": str(output_dir.resolve()),
    }
    return "wpatch predict: the plan\n" + "\n".join(f"  {key:<8} {value}" for key, value in lines.items())
