"""Why depth and world-point drift sit at one value for every approximation on random weights.

    python benchmarks/drift_floor.py                       # VGGT-1B, CPU, 4 frames of 224 x 224, ~3 min
    python benchmarks/drift_floor.py --out drift_floor.json

With random weights the depth head ends in exp() of a value near 0: the depth map is ~1.009 with a
spread of ~0.2%, less than one bf16 step at 1.0 (2**-7 = 0.0078). In bf16 (model.dtype=bf16, the
heads included) the exact map then takes a handful of values, and any change of the aggregator's
tokens moves the same few pixels by one step: the drift measures rounding, whatever the setting.
This script measures each approximation's drift against the exact model in fp32 and in bf16 on the
same weights and inputs, with the drift columns' own formula (``vggt_bench.measure.drift.relative_l2``),
and the exact depth map's spread and distinct values. Numerics, not timing: a CPU answers it.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time

import torch

import vggt_model
from vggt_model.inputs import synthetic_images
from vggt_bench.measure.drift import relative_l2

SETTINGS = {"prune_depth=4": {"prune_depth": 4}, "kv_keep=0.25": {"kv_keep": 0.25},
            "merge_ratio=0.5": {"merge_ratio": 0.5}}
OUTPUTS = ("pose_enc", "depth", "world_points")


def outputs(net, images) -> dict:
    with torch.inference_mode():
        out = net(images)
    return {name: out[name].float() for name in OUTPUTS}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--arch", default="vggt1b")
    ap.add_argument("--frames", type=int, default=4)
    ap.add_argument("--height", type=int, default=224)
    ap.add_argument("--width", type=int, default=224)
    ap.add_argument("--precisions", nargs="+", default=["fp32", "bf16"])
    ap.add_argument("--out", default=None, help="write the rows as JSON here")
    args = ap.parse_args()

    cfg = vggt_model.VGGTConfig.named(args.arch)
    cfg.track_head = None
    rows = []
    for precision in args.precisions:
        t0 = time.perf_counter()
        net = vggt_model.build(cfg, "cpu", seed=0)  # the same weights for every precision
        vggt_model.set_precision(net, precision)
        images = synthetic_images(args.frames, args.height, args.width, device="cpu").to(net.compute_dtype)
        exact = vggt_model.ExecutionConfig()
        net.configure(exact)
        ref = outputs(net, images)
        depth = ref["depth"]
        base = {"precision": precision, "depth_mean": float(depth.mean()), "depth_std": float(depth.std()),
                "depth_distinct_values": int(torch.unique(depth).numel())}
        for name, knobs in SETTINGS.items():
            net.configure(dataclasses.replace(exact, **knobs))
            test = outputs(net, images)
            row = {**base, "setting": name}
            row.update({f"drift_{o}_rel": relative_l2(test[o], ref[o]) for o in OUTPUTS})
            rows.append(row)
            print(f"{precision:5s} {name:16s} " + "  ".join(f"{o} {row[f'drift_{o}_rel']:.3e}" for o in OUTPUTS)
                  + f"  (exact depth {base['depth_mean']:.4f} +- {base['depth_std']:.4f},"
                  f" {base['depth_distinct_values']} distinct values)", flush=True)
        del net
        print(f"{precision}: {time.perf_counter() - t0:.0f} s", flush=True)
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"arch": args.arch, "frames": args.frames, "height": args.height, "width": args.width,
                       "weights": "random (seed 0)", "torch": torch.__version__, "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
