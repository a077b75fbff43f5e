"""Display names of the registered samplers in tables and figures."""

LABELS = {
    "tarflow": "TarFlow, causal decoding (KV cache)",
    "tarflow_score": "TarFlow + score denoising",
    "biflow": "BiFlow, learned reverse",
}
