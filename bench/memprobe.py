"""Peak resident memory of one sampler, measured in a fresh process.

On CPU there is no allocator to ask, and a long-lived process keeps memory that earlier work
freed, so in-process readings depend on what ran before. Here a new interpreter loads only the
models one sampler needs (from the checkpoint cache, never training), draws one warm-up image,
resets the kernel's high-water mark and samples one batch. Prints one JSON line.

    python -m bench.memprobe CONFIG_YAML CACHE_DIR ENTRY BATCH CHANNELS IMAGE_SIZE

ENTRY is the key of one of the run's entries (bench.variants): a method name, or a variant's.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

import methods
from bench.config import load_config
from bench.data import Splits
from bench.models import ModelStore, build_sampler
from bench.timing import peak_memory, proc_status_mb
from bench.variants import entries


def main(argv: list[str]) -> int:
    config, cache, key, batch, channels, size = argv
    cfg = load_config(config)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    empty = torch.empty(0, int(channels), int(size), int(size), dtype=torch.uint8)
    shape_only = Splits("probe", empty, None, empty, None)
    store = ModelStore(cfg, shape_only, Path(cache), torch.device("cpu"), train_allowed=False)
    (entry,) = [e for e in entries(cfg) if e.key == key]
    cls = methods.get(entry.method)
    models = {n: store.get(n, entry.cfg) for n in cls.needs}
    sampler = build_sampler(cls, models, torch.device("cpu"), entry.cfg)
    sampler.first_calls([0, 1])  # lazy initialisation and compilation, not measured
    seeds = list(range(int(batch)))
    with peak_memory(torch.device("cpu")) as mem:
        baseline = proc_status_mb("VmRSS")
        sampler.sample(seeds, int(batch))
    print(json.dumps({"peak_mb": mem.mb, "kind": mem.kind, "baseline_mb": baseline}))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
