"""A point: one configuration fully resolved (no ``auto`` left), from a command's Hydra config.

``resolve(cfg)`` turns a ``BenchConfig`` into a ``Point``, refusing a bad value in one line
(``UserError``) before anything is built; ``resolve_device`` does that for ``device=``.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from typing import Optional

import torch

from vggt_model.config import ConfigError, ExecutionConfig, VGGTConfig
from vggt_model.inputs import IMAGE_EXTENSIONS

from ..core.config import execution_config
from ..core.errors import UserError, one_line
from ..core.identity import point_id
from ..core.schema import WORKLOAD
from . import ranks, upstream

PARTS = ("aggregator", "full")
IMAGE_MODES = ("crop", "pad")


@dataclass
class Point:
    """A fully resolved configuration (no ``auto`` left): the workload, and how the model runs."""

    arch: str
    device: str
    frames: int
    batch: int
    height: int
    width: int
    part: str
    query_points: int
    inputs: str
    execution: ExecutionConfig
    checkpoint: Optional[str] = None
    seed: int = 0
    image_mode: str = "crop"
    input_seed: int = 0
    impl: str = "ours"
    upstream_path: Optional[str] = None
    note: str = ""  # said in the row's message (e.g. what upstream's code runs instead of a default)

    def knobs(self) -> dict:
        """Every column that identifies the point: workload fields, then the execution knobs."""
        return {**{k: getattr(self, k) for k in WORKLOAD}, **dataclasses.asdict(self.execution)}

    @property
    def point_id(self) -> str:
        return point_id(self.knobs())

    def model_config(self) -> VGGTConfig:
        return VGGTConfig.named(self.arch)


def resolve_device(name: str) -> str:
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise UserError(f"device={name} but no CUDA GPU is visible to PyTorch {torch.__version__}; use device=cpu or device=auto")
        return name
    if name != "cpu":
        raise UserError(f"unknown device {name!r}; use auto, cpu, cuda or cuda:N")
    return name


def resolve(cfg) -> Point:
    """Turn a (Hydra) BenchConfig into a Point, refusing bad values with one-line errors."""
    m, i = cfg.model, cfg.inputs
    device = resolve_device(str(cfg.device))
    on_gpu = device.startswith("cuda")
    arch = m.arch if m.arch != "auto" else ("vggt1b" if on_gpu else "small")
    dtype = m.dtype if m.dtype != "auto" else ("bf16_autocast" if on_gpu else "fp32")
    # CPU: small frames, so per-frame launch overhead (what fusing removes) stays visible
    height = i.height if i.height is not None else (336 if on_gpu else 70)
    width = i.width if i.width is not None else (518 if on_gpu else 112)
    if int(cfg.frames) < 1:
        raise UserError(f"frames must be >= 1, got frames={cfg.frames}")
    if int(i.batch) < 1:
        raise UserError(f"inputs.batch must be >= 1, got {i.batch}")
    if cfg.part not in PARTS:
        raise UserError(f"unknown part {cfg.part!r}; choose one of {list(PARTS)}")
    if i.mode not in IMAGE_MODES:
        raise UserError(f"unknown inputs.mode {i.mode!r}; choose one of {list(IMAGE_MODES)}")
    try:
        mcfg = VGGTConfig.named(arch)
        execution = execution_config(m, dtype=dtype).validate(mcfg.aggregator.depth, prefix="model.")
    except ConfigError as exc:
        raise UserError(str(exc))
    if execution.cuda_graph and not on_gpu:
        raise UserError("model.cuda_graph=true needs a CUDA GPU (device=cuda); CUDA graphs do not exist on the CPU")
    p = mcfg.aggregator.patch_size
    if i.image_dir is not None:
        height, width = _image_size(i.image_dir, i.mode)
    if height % p or width % p or height < p or width < p:
        raise UserError(f"inputs.height and inputs.width must be positive multiples of {p}, got {height} x {width}")
    if int(cfg.measure.repeats) < 1 or int(cfg.measure.warmup) < 0:
        raise UserError(f"measure.repeats must be >= 1 and measure.warmup >= 0, got {cfg.measure.repeats}, {cfg.measure.warmup}")
    if m.checkpoint is not None and not os.path.isfile(m.checkpoint):
        raise UserError(f"model.checkpoint not found: {m.checkpoint} (give the path of model.pt or a .safetensors file)")
    if m.impl not in upstream.IMPLS:
        raise UserError(f"unknown model.impl {m.impl!r}; choose one of {list(upstream.IMPLS)}")
    ranks.check(execution.context_parallel, int(cfg.frames), mcfg.aggregator.num_heads, device)
    note = ""
    if m.impl == "upstream":
        upstream.locate(m.upstream_path)  # one line naming how to get it, before anything runs
        execution, note = upstream.as_run(execution)
    return Point(
        arch=arch, device=device, frames=int(cfg.frames), batch=int(i.batch), height=int(height), width=int(width),
        part=cfg.part, query_points=int(i.query_points),
        inputs=os.path.abspath(i.image_dir) if i.image_dir else "synthetic", execution=execution,
        checkpoint=m.checkpoint, seed=int(m.seed), image_mode=i.mode, input_seed=int(i.seed), impl=m.impl,
        upstream_path=m.upstream_path, note=note,
    )


def _image_size(folder: str, mode: str):
    """(H, W) the image folder's frames have after upstream's preprocessing."""
    from vggt_model.inputs import list_images, load_images

    try:
        files = list_images(folder)
    except FileNotFoundError as exc:
        raise UserError(f"inputs.image_dir: {exc}")
    try:
        h, w = load_images(files, mode).shape[-2:]
    except Exception as exc:  # a file that is not an image, or one PIL cannot decode
        raise UserError(f"inputs.image_dir: cannot read the images in {folder} ({one_line(exc)}); "
                        f"give a folder of {', '.join(IMAGE_EXTENSIONS)} images")
    return int(h), int(w)
