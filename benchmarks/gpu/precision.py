"""Half precision against fp32, per attention backend: does every backend stay within bf16 error?

    python benchmarks/gpu/precision.py --frames 4 --out precision.json          # VGGT-1B on the GPU
    python benchmarks/gpu/precision.py --arch small --device cpu --height 56 --width 84

Random weights (seeded), one set of synthetic frames. The reference is fp32 with TF32 off and
SDPA's math kernel; each backend then runs in fp32 (where it can), bf16 autocast (upstream's
way) and pure bf16. Reported: relative L2 error ||out - ref|| / ||ref|| of the last aggregator
layer, depth, world points and the pose encoding. bf16 rounding alone gives about 1e-3 to 1e-2.
"""

import argparse
import json
import sys

import torch

import vggt_model
from vggt_model.inputs import synthetic_images


def outputs(net, images):
    with torch.inference_mode():
        out = net(images, return_intermediates=True)
    return {
        "tokens": out["aggregated_tokens"][-1].float(),
        "depth": out["depth"].float(),
        "world_points": out["world_points"].float(),
        "pose_enc": out["pose_enc"].float(),
    }


def rel(a, b):
    return float((a - b).norm() / b.norm())


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--arch", default="vggt1b")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--frames", type=int, default=4)
    ap.add_argument("--height", type=int, default=336)
    ap.add_argument("--width", type=int, default=518)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()

    cfg = vggt_model.VGGTConfig.named(args.arch)
    cfg.track_head = None
    net = vggt_model.build(cfg, args.device, seed=0)
    fp32_state = {k: v.detach().clone().cpu() for k, v in net.state_dict().items()}
    images = synthetic_images(args.frames, args.height, args.width, device=args.device)
    vggt_model.set_precision(net, "fp32", tf32=False)
    net.configure(vggt_model.ExecutionConfig(attention="sdpa_math"))
    ref = outputs(net, images)

    rows = []
    for backend in vggt_model.attention.BACKENDS:
        for precision in ("fp32", "bf16_autocast", "bf16"):
            # bf16 weights are rounded: start each run from the fp32 weights (load copies into
            # the parameters' current dtype, so go back to fp32 first)
            vggt_model.set_precision(net, "fp32", tf32=False)
            net.load_state_dict(fp32_state)
            vggt_model.set_precision(net, precision, tf32=False)
            dtype = net.compute_dtype
            reason = vggt_model.attention.why_unavailable(backend, args.device, dtype, cfg.aggregator.head_dim)
            row = {"backend": backend, "precision": precision}
            if reason is not None:
                row["status"] = "unavailable: " + reason
            else:
                try:
                    net.configure(vggt_model.ExecutionConfig(attention=backend))
                    out = outputs(net, images)
                    row.update({f"rel_{k}": rel(out[k], ref[k]) for k in ref})
                    row["status"] = "ok"
                except Exception as exc:  # recorded, the table goes on
                    row["status"] = f"error: {type(exc).__name__}: {str(exc).splitlines()[0][:200]}"
            rows.append(row)
            cells = "  ".join(f"{k[4:]}={row[k]:.2e}" for k in row if k.startswith("rel_"))
            print(f"{backend:<15} {precision:<14} {cells or row['status']}", flush=True)
    summary = {
        "device": torch.cuda.get_device_name() if args.device.startswith("cuda") else "cpu",
        "torch": torch.__version__, "arch": args.arch, "frames": args.frames,
        "height": args.height, "width": args.width, "rows": rows,
    }
    if args.out:
        with open(args.out, "w") as f:
            json.dump(summary, f, indent=1)
    bad = [r for r in rows if r["status"] == "ok" and r["precision"] != "fp32" and r["rel_tokens"] > 2e-2]
    bad += [r for r in rows if r["status"] == "ok" and r["precision"] == "fp32" and r["rel_tokens"] > 1e-4]
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
