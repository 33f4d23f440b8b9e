"""Published numbers we compare against, as data. Shown only where they are comparable.

``UPSTREAM_H100``: VGGT-1B aggregator runtime and GPU memory on one NVIDIA H100 with
FlashAttention-3 at 336 x 518, from upstream's README ("Runtime and GPU Memory"); the
resolution is stated in the paper's Table 9, which prints the same numbers. Upstream writes
"GB"; it does not say whether it means 10**9 or 2**30 bytes, so the values are kept as printed
and labelled "GB" wherever they are drawn.
"""

from __future__ import annotations

import pandas as pd

UPSTREAM_H100_SOURCE = (
    "facebookresearch/vggt README, 'Runtime and GPU Memory' (aggregator, one H100, FlashAttention-3; "
    "336x518 per the paper's Table 9)"
)

# frames -> (aggregator seconds, memory GB as printed)
_UPSTREAM_H100 = {
    1: (0.04, 1.88),
    2: (0.05, 2.07),
    4: (0.07, 2.45),
    8: (0.11, 3.23),
    10: (0.14, 3.63),
    20: (0.31, 5.58),
    50: (1.04, 11.41),
    100: (3.12, 21.15),
    200: (8.75, 40.63),
}


def upstream_h100() -> pd.DataFrame:
    """Upstream's published aggregator points: columns frames, latency_s, memory_gb, plus the
    setting they were taken at (arch, height, width, part, gpu, attention) and ``source``."""
    frame = pd.DataFrame(
        [(s, t, m) for s, (t, m) in _UPSTREAM_H100.items()], columns=["frames", "latency_s", "memory_gb"]
    )
    return frame.assign(
        arch="vggt1b", height=336, width=518, part="aggregator", gpu="NVIDIA H100", attention="FlashAttention-3",
        source=UPSTREAM_H100_SOURCE,
    )


REFERENCES = {"upstream_h100": upstream_h100}
# Legend text: short, and saying that these points are not ours.
REFERENCE_LABELS = {"upstream_h100": "reference: upstream H100, FA3\n(published, not measured here)"}


def applies(name: str, *, gpu_name: str, arch: str, height: int, width: int, part: str) -> bool:
    """Whether reference ``name`` is comparable with results of this setting.

    Upstream's points are VGGT-1B aggregator timings on a GPU at 336 x 518: next to CPU results,
    another model size, another resolution or the full model they would suggest a comparison
    that does not hold.
    """
    if name not in REFERENCES:
        return False
    ref = REFERENCES[name]()
    return (bool(gpu_name) and arch == ref.arch[0] and (height, width) == (int(ref.height[0]), int(ref.width[0]))
            and part == ref.part[0])
