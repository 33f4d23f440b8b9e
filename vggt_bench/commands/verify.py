"""``verify``: our model against a reference case made with upstream code, or a checkpoint's keys.

A case directory holds ``case.json`` (upstream constructor arguments per module, inputs,
tolerances), ``state_dict.safetensors`` and ``io.safetensors`` (``input.*`` and upstream's
``output.*``). Anyone with upstream code and the real weights can make one at any setting.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from typing import Dict, List, Optional

import torch

import vggt_model
from vggt_model.config import ConfigError, VGGTConfig

from ..core.config import execution_config
from ..core.errors import EXIT_USER_ERROR, UserError, say_error
from ..measure import ranks
from ..measure.point import resolve_device

# Relative L2 error allowed when the model runs in half precision against fp32 references.
HALF_REL_L2 = {"bf16_autocast": 2e-2, "bf16": 2e-2, "fp16": 1e-2}


class CaseError(ValueError):
    """A malformed case directory; the message names the file or key."""


@dataclass
class Check:
    name: str
    shape: tuple
    max_abs: float
    max_rel: float
    rel_l2: float
    atol: float
    rtol: float
    worst: float  # max |d| / (atol + rtol |ref|): <= 1 passes
    passed: bool
    note: str = ""


def read_case(directory: str):
    """(case dict, state dict, io dict) with every required file and key present."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    if not os.path.isdir(directory):
        raise CaseError(f"case directory not found: {directory}")
    path = os.path.join(directory, "case.json")
    if not os.path.isfile(path):
        raise CaseError(f"{path} is missing (a case needs case.json, state_dict.safetensors, io.safetensors)")
    try:
        with open(path) as f:
            case = json.load(f)
    except json.JSONDecodeError as exc:
        raise CaseError(f"{path} is not valid JSON: {exc}")
    for key in ("kind", "modules", "tolerances_atol_rtol_by_output_prefix"):
        if key not in case:
            raise CaseError(f"{path} has no {key!r} key")
    if case["kind"] not in ("vggt", "aggregator"):
        raise CaseError(f"{path}: kind must be 'vggt' or 'aggregator', got {case['kind']!r}")
    if "aggregator" not in case["modules"]:
        raise CaseError(f"{path}: modules has no 'aggregator' entry")
    tensors = {}
    for name in ("state_dict.safetensors", "io.safetensors"):
        file = os.path.join(directory, name)
        if not os.path.isfile(file):
            raise CaseError(f"{file} is missing")
        try:
            tensors[name] = load_file(file)
        except (SafetensorError, OSError, ValueError) as exc:
            raise CaseError(f"{file} cannot be read: {exc}")
    io = tensors["io.safetensors"]
    if "input.images" not in io:
        raise CaseError(f"{os.path.join(directory, 'io.safetensors')} has no 'input.images' tensor")
    if not any(k.startswith("output.") for k in io):
        raise CaseError(f"{os.path.join(directory, 'io.safetensors')} has no 'output.*' tensors")
    return case, tensors["state_dict.safetensors"], io


def _tolerance(case: dict, name: str, scale: float):
    table = case["tolerances_atol_rtol_by_output_prefix"]
    base = name.split(".")[0]
    if base not in table:
        raise CaseError(f"case.json: no tolerance for output {name!r} (tolerances_atol_rtol_by_output_prefix.{base})")
    atol, rtol = table[base]
    return atol * scale, rtol * scale


def compare(name: str, ours: torch.Tensor, ref: torch.Tensor, atol: float, rtol: float, rel_l2_max: Optional[float]) -> Check:
    if tuple(ours.shape) != tuple(ref.shape):
        return Check(name, tuple(ref.shape), math.inf, math.inf, math.inf, atol, rtol, math.inf, False,
                     f"shape {tuple(ours.shape)} vs reference {tuple(ref.shape)}")
    ours, ref = ours.detach().double().cpu(), ref.double()
    diff = (ours - ref).abs()
    if not torch.isfinite(ours).all():
        return Check(name, tuple(ref.shape), math.inf, math.inf, math.inf, atol, rtol, math.inf, False, "non-finite output")
    max_abs = float(diff.max()) if diff.numel() else 0.0
    significant = ref.abs() > atol
    max_rel = float((diff[significant] / ref.abs()[significant]).max()) if significant.any() else 0.0
    rel_l2 = float(diff.norm() / ref.norm()) if float(ref.norm()) > 0 else max_abs
    worst = float((diff / (atol + rtol * ref.abs())).max()) if diff.numel() else 0.0
    if rel_l2_max is None:
        return Check(name, tuple(ref.shape), max_abs, max_rel, rel_l2, atol, rtol, worst, worst <= 1.0)
    return Check(name, tuple(ref.shape), max_abs, max_rel, rel_l2, atol, rtol, worst, rel_l2 <= rel_l2_max,
                 f"half precision: rel L2 <= {rel_l2_max:g}")


def _outputs(net: vggt_model.VGGT, case: dict, images: torch.Tensor, queries) -> Dict[str, torch.Tensor]:
    captured = []  # the patch embed runs once, or once per chunk of frames (lean and offload plans)
    hook = net.aggregator.patch_embed.register_forward_hook(lambda m, i, o: captured.append(o))
    try:
        with torch.inference_mode():
            if case["kind"] == "aggregator":
                tokens, _ = net.aggregate(images)
                out = {"aggregated_tokens": tokens}
            else:
                out = net(images, queries, return_intermediates=True)
    finally:
        hook.remove()
    whole = (lambda t: t) if net.context is None else net.context.gather_frames  # context parallel: every rank's frames
    flat = {f"aggregated_tokens.{i}": whole(vggt_model.materialize(t)) for i, t in enumerate(out.pop("aggregated_tokens"))
            if t is not None}
    embedded = torch.cat(captured)  # [B * S, P', C]
    flat["patch_embed_tokens"] = whole(embedded.unflatten(0, (images.shape[0], -1))).flatten(0, 1)
    for key, value in out.items():
        flat[key] = torch.stack(value) if isinstance(value, list) else value
    return flat


INPUTS = (("output", "input.images"), ("output_square", "input.images_square"))  # outputs' prefix per input


def case_outputs(directory: str, device: str, settings) -> Dict[str, Dict[str, torch.Tensor]]:
    """Our model's outputs for each input of a case, ``{prefix: {output name: tensor}}``, built from
    the case's modules and weights and run with ``settings`` (a ``model.*`` node)."""
    case, state, io = read_case(directory)
    net, _ = _case_model(directory, case, state, device, settings)
    ours = {}
    for prefix, key in INPUTS:
        if key in io:
            queries = io.get("input.query_points") if case["kind"] == "vggt" else None
            ours[prefix] = _outputs(net, case, io[key].to(device), None if queries is None else queries.to(device))
    return ours


def _case_model(directory: str, case: dict, state: dict, device: str, settings):
    try:
        cfg = VGGTConfig.from_modules(case["modules"]).validate()
    except (ConfigError, TypeError, KeyError) as exc:
        raise CaseError(f"case.json modules: {exc}")
    # references are fp32: `auto` means fp32 here
    dtype = "fp32" if settings.dtype == "auto" else settings.dtype
    execution = execution_config(settings, dtype=dtype).validate(cfg.aggregator.depth, prefix="model.")
    net = vggt_model.VGGT(cfg).eval()
    vggt_model.checkpoint.check(net, state, os.path.join(directory, "state_dict.safetensors"))
    net.load_state_dict(state, strict=True)
    net.to(device)
    vggt_model.set_precision(net, execution.dtype, execution.tf32)
    net.configure(execution)
    return net, execution


def verify_case(directory: str, device: str, settings, tolerance_scale: float = 1.0) -> List[Check]:
    case, state, io = read_case(directory)
    net, execution = _case_model(directory, case, state, device, settings)
    rel_l2_max = HALF_REL_L2.get(execution.dtype)
    checks = []
    for prefix, key in INPUTS:
        if key not in io:
            continue
        queries = io.get("input.query_points") if case["kind"] == "vggt" else None
        ours = _outputs(net, case, io[key].to(device), None if queries is None else queries.to(device))
        checks += check_outputs(case, io, prefix, ours, tolerance_scale, rel_l2_max)
    return checks


def check_outputs(case: dict, io: dict, prefix: str, ours: Dict[str, torch.Tensor], tolerance_scale: float = 1.0,
                  rel_l2_max: Optional[float] = None, reference: Optional[Dict[str, torch.Tensor]] = None) -> List[Check]:
    """Every output the case has under ``prefix`` against ``reference`` (default: upstream's, from
    ``io``) with the case's tolerances."""
    checks = []
    expected = sorted(k[len(prefix) + 1 :] for k in io if k.startswith(prefix + "."))
    for name in expected:
        atol, rtol = _tolerance(case, name, tolerance_scale)
        label = name if prefix == "output" else f"{prefix}.{name}"
        ref = io[f"{prefix}.{name}"] if reference is None else reference[name]
        if name not in ours:
            checks.append(Check(label, tuple(ref.shape), math.inf, math.inf, math.inf, atol, rtol,
                                math.inf, False, "not produced by our model"))
            continue
        checks.append(compare(label, ours[name], ref, atol, rtol, rel_l2_max))
    return checks


def verify_cases(jobs, device: str) -> List[List[Check]]:
    """``verify_case`` for each ``(directory, settings, tolerance_scale)`` in turn: in the ranks of a
    context-parallel group, one launch verifies many settings."""
    return [verify_case(directory, device, settings, scale) for directory, settings, scale in jobs]


def verify_on_ranks(jobs, device: str, world: int) -> List[List[Check]]:
    """``verify_cases`` in ``world`` processes started here (``model.context_parallel``): rank 0's checks."""
    return ranks.first_result(ranks.launch(world, verify_cases, (jobs, device), device))


def check_context_parallel(directory: str, world: int, device: str) -> None:
    """One line (UserError) when the case cannot be split over ``world`` ranks: frames, heads, backend."""
    case, _, io = read_case(directory)
    try:
        heads = VGGTConfig.from_modules(case["modules"]).aggregator.num_heads
    except (ConfigError, TypeError, KeyError) as exc:
        raise CaseError(f"case.json modules: {exc}")
    ranks.check(world, io["input.images"].shape[1], heads, device)


def format_checks(checks: List[Check]) -> str:
    width = max(len(c.name) for c in checks)
    lines = [f"{'output':<{width}}  {'max_abs':>9}  {'max_rel':>9}  {'rel_l2':>9}  {'atol':>7}  {'rtol':>7}  {'worst/tol':>9}  result"]
    for c in checks:
        lines.append(
            f"{c.name:<{width}}  {c.max_abs:9.2e}  {c.max_rel:9.2e}  {c.rel_l2:9.2e}  {c.atol:7.0e}  {c.rtol:7.0e}  "
            f"{c.worst:9.3f}  {'PASS' if c.passed else 'FAIL'}{'  (' + c.note + ')' if c.note else ''}"
        )
    return "\n".join(lines)


ARCHS = ("vggt1b", "small")  # the architectures VGGTConfig.named builds
SHOWN = 4  # names shown of each kind of difference: the summary stays under 20 lines


def _meta_model(arch: str) -> vggt_model.VGGT:
    """The architecture ``arch`` on the meta device: its names and shapes, no memory."""
    try:
        cfg = VGGTConfig.named(arch)
    except ConfigError as exc:
        raise UserError(str(exc))
    with torch.device("meta"):
        return vggt_model.VGGT(cfg)


def verify_checkpoint(path: str, arch: str) -> int:
    """PASS when the checkpoint loads strictly into ``arch``; else a summary of the differences (their
    counts and the first SHOWN names of each) and one line naming the fix (UserError, exit 2)."""
    net = _meta_model(arch)
    state = vggt_model.checkpoint.read_state_dict(path)
    missing, unexpected, mismatched = vggt_model.checkpoint.compare(net, state)
    if missing or unexpected or mismatched:
        for kind, names in (("missing", missing), ("unexpected", unexpected), ("mis-shaped", mismatched)):
            if names:
                print(f"{kind} ({len(names)}):")
                print("\n".join(f"  {name}" for name in names[:SHOWN]))
                if len(names) > SHOWN:
                    print(f"  ... and {len(names) - SHOWN} more")
        fits = [other for other in ARCHS if other != arch and not any(vggt_model.checkpoint.compare(
            _meta_model(other), state))]
        fix = (f"it loads strictly into arch={fits[0]}: pass arch={fits[0]}" if fits else
               f"give a checkpoint of {arch} (for vggt1b the official model.pt), or the arch= it was made for "
               f"({' | '.join(ARCHS)})")
        raise UserError(f"{path} does not load strictly into arch={arch} ({len(net.state_dict())} tensors): "
                        f"{len(missing)} missing, {len(unexpected)} unexpected, {len(mismatched)} mis-shaped; {fix}")
    params = sum(t.numel() for t in state.values())
    dtypes = sorted({str(t.dtype).replace("torch.", "") for t in state.values()})
    print(f"PASS: {path} loads strictly into {arch}: {len(state)} tensors, {params:,} parameters ({', '.join(dtypes)})")
    return 0


def main(cfg) -> int:
    try:
        if cfg.case is None and cfg.checkpoint is None:
            raise UserError("give case=DIR (a reference case directory) or checkpoint=PATH")
        if cfg.checkpoint is not None:
            code = verify_checkpoint(cfg.checkpoint, cfg.arch)
            if cfg.case is None:
                return code
        device = resolve_device(cfg.device)
        world = int(cfg.model.context_parallel)
        if world > 1:  # the case's frames over ranks: started here, or this process is one (torchrun, srun)
            check_context_parallel(cfg.case, world, device)
            if ranks.launched() is None:
                from omegaconf import OmegaConf

                settings = OmegaConf.to_object(cfg.model) if OmegaConf.is_config(cfg.model) else cfg.model
                checks = verify_on_ranks([(cfg.case, settings, float(cfg.tolerance_scale))], device, world)[0]
            else:
                ranks.join(device, world)
                checks = verify_case(cfg.case, device, cfg.model, float(cfg.tolerance_scale))
        else:
            checks = verify_case(cfg.case, device, cfg.model, float(cfg.tolerance_scale))
    except (CaseError, UserError, vggt_model.checkpoint.CheckpointError, ConfigError,
            vggt_model.attention.BackendUnavailable) as exc:
        say_error(str(exc))
        return EXIT_USER_ERROR
    if not ranks.writes_rows():  # another rank of an external launch: rank 0 reports
        return 0
    m = cfg.model
    execution = execution_config(m)
    approx = "".join(f" {n}={getattr(m, n):g}" for n in execution.approximations())
    print(f"case {cfg.case} on {device}: dtype={m.dtype} attention={m.attention} global_attention={m.global_attention} "
          f"frame_exec={m.frame_exec} memory_plan={m.memory_plan} prune_depth={m.prune_depth}{approx}"
          + (f" context_parallel={m.context_parallel}" if m.context_parallel != 1 else ""))
    print(format_checks(checks))
    failed = [c for c in checks if not c.passed]
    if failed:
        why = ""
        if m.prune_depth > 0:
            why = " (prune_depth > 0 changes the function: this is its drift)"
        elif approx:
            why = f" ({approx.strip()} approximates the function: this is its drift)"
        print(f"FAIL: {len(failed)} of {len(checks)} outputs outside tolerance{why}")
        return 1
    print(f"PASS: all {len(checks)} outputs within tolerance")
    return 0
