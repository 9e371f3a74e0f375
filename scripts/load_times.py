"""Load time of each model path (docs/models.md): tiny.en and base from their offline bundles (CTranslate2), as
transformers folders (safetensors fp32 and fp16, pytorch_model.bin, 50 MB shards) written by transformers'
`save_pretrained`, and as openai .pt checkpoints; the median of three `load_model` calls after a warm-up.

    python -m scripts.load_times OUT_DIR   # from the repository root; needs the test extra (transformers)
"""

import dataclasses
import statistics
import sys
import time
from pathlib import Path

import torch

from tests.test_huggingface import as_bin, export
from wpatch.models.loading import load_model

FORMATS = (
    ("safetensors fp32", None, {}),
    ("safetensors fp16", torch.float16, {}),
    ("pytorch_model.bin fp32", None, {}),
    ("safetensors fp32, 50 MB shards", None, {"max_shard_size": "50MB"}),
)


def specs(out: Path) -> dict[str, str]:
    """Each path to tiny.en and base, written into `out` once."""
    found = {}
    for name in ("tiny.en", "base"):
        model = load_model(name)
        found[f"{name}, offline bundle (CTranslate2)"] = name
        for label, dtype, save in FORMATS:
            folder = out / f"{name}-{''.join(c if c.isalnum() else '_' for c in label)}"
            if not folder.exists():
                export(model, folder, dtype, **save)
                if "bin" in label:
                    as_bin(folder)
            found[f"{name}, Hugging Face folder, {label}"] = str(folder)
        checkpoint = out / f"{name}.pt"
        torch.save({"dims": dataclasses.asdict(model.dims), "model_state_dict": model.state_dict()}, checkpoint)
        found[f"{name}, openai .pt"] = str(checkpoint)
    return found


def main() -> None:
    out = Path(sys.argv[1])
    out.mkdir(parents=True, exist_ok=True)
    print("| model and path | load (s) |\n|---|---|")
    for label, spec in specs(out).items():
        load_model(spec)
        times = []
        for _ in range(3):
            start = time.perf_counter()
            load_model(spec)
            times.append(time.perf_counter() - start)
        print(f"| {label} | {statistics.median(times):.2f} |", flush=True)


if __name__ == "__main__":
    main()
