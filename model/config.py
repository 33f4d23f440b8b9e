"""Typed configuration of the VGGT architecture and of how it is executed.

Architecture configs mirror the constructor arguments of upstream's modules
(facebookresearch/vggt), field for field, so that a reference case's ``modules``
entry in ``case.json`` maps onto them one to one. Defaults are VGGT-1B.

``ExecutionConfig`` holds the execution strategy (how frame attention is batched,
how many global layers are converted to frame attention, which attention kernel
runs, NVTX ranges). It never changes the state dict; precision and compilation are
applied to a built model by ``model.execution``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Optional


class ConfigError(ValueError):
    """A configuration value is out of range; the message names the constraint."""


@dataclass
class DinoV2Config:
    """DINOv2 ViT with registers used as the aggregator's patch embed (upstream ``DinoVisionTransformer``).

    Defaults are ``dinov2_vitl14_reg`` as the aggregator builds it.
    """

    img_size: int = 518
    patch_size: int = 14
    in_chans: int = 3
    embed_dim: int = 1024
    depth: int = 24
    num_heads: int = 16
    mlp_ratio: float = 4.0
    qkv_bias: bool = True
    ffn_bias: bool = True
    proj_bias: bool = True
    drop_path_rate: float = 0.0
    init_values: Optional[float] = 1.0
    ffn_layer: str = "mlp"
    block_chunks: int = 0
    num_register_tokens: int = 4
    interpolate_antialias: bool = True
    interpolate_offset: float = 0.0
    qk_norm: bool = False


_VIT_PRESETS = {
    # upstream's vit_* constructors fix width, depth and heads
    "dinov2_vitl14_reg": dict(embed_dim=1024, depth=24, num_heads=16),
    "dinov2_vitb14_reg": dict(embed_dim=768, depth=12, num_heads=12),
    "dinov2_vits14_reg": dict(embed_dim=384, depth=12, num_heads=6),
    "dinov2_vitg2_reg": dict(embed_dim=1536, depth=40, num_heads=24),
}


@dataclass
class AggregatorConfig:
    """Alternating-attention aggregator (upstream ``Aggregator``)."""

    img_size: int = 518
    patch_size: int = 14
    embed_dim: int = 1024
    depth: int = 24
    num_heads: int = 16
    mlp_ratio: float = 4.0
    num_register_tokens: int = 4
    qkv_bias: bool = True
    proj_bias: bool = True
    ffn_bias: bool = True
    patch_embed: str = "dinov2_vitl14_reg"
    aa_order: list = field(default_factory=lambda: ["frame", "global"])
    aa_block_size: int = 1
    qk_norm: bool = True
    rope_freq: int = 100
    init_values: float = 0.01
    cached_layer_indices: list = field(default_factory=lambda: [4, 11, 17, 23])

    @property
    def head_dim(self) -> int:
        return self.embed_dim // self.num_heads

    @property
    def patch_start_idx(self) -> int:
        return 1 + self.num_register_tokens

    def cached_layers(self) -> frozenset:
        """Layer outputs the aggregator keeps: the configured ones plus the last."""
        return frozenset(list(self.cached_layer_indices) + [self.depth - 1])


@dataclass
class CameraHeadConfig:
    dim_in: int = 2048
    trunk_depth: int = 4
    pose_encoding_type: str = "absT_quaR_FoV"
    num_heads: int = 16
    mlp_ratio: int = 4
    init_values: float = 0.01
    trans_act: str = "linear"
    quat_act: str = "linear"
    fl_act: str = "relu"
    num_iterations: int = 4  # forward argument of upstream's CameraHead


@dataclass
class DPTHeadConfig:
    dim_in: int = 2048
    patch_size: int = 14
    output_dim: int = 4
    activation: str = "inv_log"
    conf_activation: str = "expp1"
    features: int = 256
    out_channels: list = field(default_factory=lambda: [256, 512, 1024, 1024])
    intermediate_layer_idx: list = field(default_factory=lambda: [4, 11, 17, 23])
    pos_embed: bool = True
    feature_only: bool = False
    down_ratio: int = 1
    frames_chunk_size: int = 8  # forward argument of upstream's DPTHead


@dataclass
class TrackerConfig:
    """Upstream ``BaseTrackerPredictor`` arguments (the updateformer's are fixed upstream)."""

    stride: int = 2
    corr_levels: int = 7
    corr_radius: int = 4
    latent_dim: int = 128
    hidden_size: int = 384
    use_spaceatt: bool = True
    depth: int = 6
    max_scale: int = 518
    predict_conf: bool = True
    num_heads: int = 8
    num_virtual_tracks: int = 64


@dataclass
class TrackHeadConfig:
    """Upstream ``TrackHead``: a feature-only DPT head plus an iterative tracker."""

    dim_in: int = 2048
    patch_size: int = 14
    features: int = 128
    iters: int = 4
    predict_conf: bool = True
    stride: int = 2
    corr_levels: int = 7
    corr_radius: int = 4
    hidden_size: int = 384
    # Upstream hard-codes these two submodules from the arguments above; a reference
    # case may replace them (``track_head.feature_extractor`` / ``track_head.tracker``).
    feature_extractor: Optional[DPTHeadConfig] = None
    tracker: Optional[TrackerConfig] = None

    def feature_extractor_config(self) -> DPTHeadConfig:
        if self.feature_extractor is not None:
            return self.feature_extractor
        return DPTHeadConfig(
            dim_in=self.dim_in, patch_size=self.patch_size, features=self.features,
            feature_only=True, down_ratio=2, pos_embed=False,
        )

    def tracker_config(self) -> TrackerConfig:
        if self.tracker is not None:
            return self.tracker
        return TrackerConfig(
            latent_dim=self.features, predict_conf=self.predict_conf, stride=self.stride,
            corr_levels=self.corr_levels, corr_radius=self.corr_radius, hidden_size=self.hidden_size,
        )


@dataclass
class VGGTConfig:
    """The whole model. ``VGGTConfig()`` is VGGT-1B; a head set to None is not built."""

    aggregator: AggregatorConfig = field(default_factory=AggregatorConfig)
    patch_embed_vit: Optional[DinoV2Config] = None  # None: derived from aggregator.patch_embed
    camera_head: Optional[CameraHeadConfig] = field(default_factory=CameraHeadConfig)
    point_head: Optional[DPTHeadConfig] = field(
        default_factory=lambda: DPTHeadConfig(output_dim=4, activation="inv_log", conf_activation="expp1")
    )
    depth_head: Optional[DPTHeadConfig] = field(
        default_factory=lambda: DPTHeadConfig(output_dim=2, activation="exp", conf_activation="expp1")
    )
    track_head: Optional[TrackHeadConfig] = field(default_factory=TrackHeadConfig)

    def vit_config(self) -> Optional[DinoV2Config]:
        """The DINOv2 patch-embed config, or None for the simple conv patch embed."""
        if self.patch_embed_vit is not None:
            return self.patch_embed_vit
        agg = self.aggregator
        if "conv" in agg.patch_embed:
            return None
        if agg.patch_embed not in _VIT_PRESETS:
            raise ConfigError(
                f"unknown aggregator.patch_embed {agg.patch_embed!r}; use 'conv' or one of {sorted(_VIT_PRESETS)}"
            )
        return DinoV2Config(
            img_size=agg.img_size, patch_size=agg.patch_size,
            num_register_tokens=agg.num_register_tokens, **_VIT_PRESETS[agg.patch_embed],
        )

    def validate(self) -> "VGGTConfig":
        agg = self.aggregator
        if agg.embed_dim % agg.num_heads:
            raise ConfigError(f"aggregator.embed_dim {agg.embed_dim} must be divisible by num_heads {agg.num_heads}")
        if agg.depth % agg.aa_block_size:
            raise ConfigError(f"aggregator.depth {agg.depth} must be divisible by aa_block_size {agg.aa_block_size}")
        if agg.rope_freq > 0 and agg.head_dim % 4:
            raise ConfigError(f"2D RoPE needs head_dim divisible by 4, got {agg.head_dim}")
        if sorted(agg.aa_order) != ["frame", "global"]:
            raise ConfigError(f"aggregator.aa_order must hold 'frame' and 'global' once each, got {agg.aa_order}")
        for name in ("point_head", "depth_head"):
            head = getattr(self, name)
            if head is not None:
                bad = [i for i in head.intermediate_layer_idx if i not in agg.cached_layers()]
                if bad:
                    raise ConfigError(f"{name} reads layers {bad} that the aggregator does not cache")
        self.vit_config()
        return self

    # ---- named architectures -------------------------------------------------------------
    @classmethod
    def vggt1b(cls) -> "VGGTConfig":
        return cls()

    @classmethod
    def small(cls) -> "VGGTConfig":
        """A CPU-sized VGGT: same structure and head_dim 64 as VGGT-1B, 1/8 of the width.

        It keeps the DINOv2 patch embed (4 blocks), 8 frame + 8 global layers, all heads.
        """
        dim, depth, heads = 128, 8, 2
        layers = [1, 3, 5, 7]
        dpt = dict(dim_in=2 * dim, features=32, out_channels=[32, 64, 128, 128], intermediate_layer_idx=layers)
        return cls(
            aggregator=AggregatorConfig(
                embed_dim=dim, depth=depth, num_heads=heads, cached_layer_indices=layers,
            ),
            patch_embed_vit=DinoV2Config(embed_dim=dim, depth=4, num_heads=heads),
            camera_head=CameraHeadConfig(dim_in=2 * dim, trunk_depth=2, num_heads=heads),
            point_head=DPTHeadConfig(output_dim=4, activation="inv_log", **dpt),
            depth_head=DPTHeadConfig(output_dim=2, activation="exp", **dpt),
            track_head=TrackHeadConfig(
                dim_in=2 * dim, features=32, hidden_size=64, corr_levels=3, corr_radius=2,
                feature_extractor=DPTHeadConfig(feature_only=True, down_ratio=2, pos_embed=False, **dpt),
                tracker=TrackerConfig(latent_dim=32, hidden_size=64, corr_levels=3, corr_radius=2, depth=2),
            ),
        )

    @classmethod
    def named(cls, arch: str) -> "VGGTConfig":
        factories = {"vggt1b": cls.vggt1b, "small": cls.small}
        if arch not in factories:
            raise ConfigError(f"unknown model arch {arch!r}; choose one of {sorted(factories)}")
        return factories[arch]()

    # ---- reference cases -----------------------------------------------------------------
    @classmethod
    def from_modules(cls, modules: dict) -> "VGGTConfig":
        """Build from a reference case's ``modules`` (upstream constructor arguments per module).

        Modules absent from ``modules`` are not built (None).
        """
        def make(kind, key, extra=None):
            if key not in modules:
                return None
            args = dict(modules[key])
            args.update(extra or {})
            return _strict(kind, args, key)

        agg_args = dict(modules["aggregator"])
        vit = make(DinoV2Config, "patch_embed_vit")
        if vit is not None:
            agg_args["patch_embed"] = "dinov2_custom"
        aggregator = _strict(AggregatorConfig, agg_args, "aggregator")
        dpt_fwd = modules.get("dpt_forward", {})
        cam_fwd = modules.get("camera_head_forward", {})
        track_fwd = modules.get("track_head_forward", {})
        track = make(TrackHeadConfig, "track_head")
        if track is not None:
            if "iters" in track_fwd:
                track.iters = track_fwd["iters"]
            track.feature_extractor = make(DPTHeadConfig, "track_head.feature_extractor", dpt_fwd)
            track.tracker = make(TrackerConfig, "track_head.tracker")
        return cls(
            aggregator=aggregator,
            patch_embed_vit=vit,
            camera_head=make(CameraHeadConfig, "camera_head", cam_fwd),
            point_head=make(DPTHeadConfig, "point_head", dpt_fwd),
            depth_head=make(DPTHeadConfig, "depth_head", dpt_fwd),
            track_head=track,
        )

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def _strict(kind, args: dict, where: str):
    names = {f.name for f in dataclasses.fields(kind)}
    unknown = sorted(set(args) - names)
    if unknown:
        raise ConfigError(f"{where}: unknown argument(s) {unknown}; known: {sorted(names)}")
    return kind(**args)


# ---- execution knobs -----------------------------------------------------------------------------
# Every execution knob is one field of ExecutionConfig, declared with ``knob()``. Its metadata is the
# one definition the rest of the project derives from: the harness's Hydra schema inherits the fields,
# the results table's knob columns and point ids list them, the report reads ``fidelity`` to tell
# exact settings from approximations, and ``validate_fields`` checks every value the same way.

FRAME_EXEC = ("fused", "sequential", "chunked")
PRUNE_WEIGHTS = ("global", "frame")
PRECISIONS = ("fp32", "bf16_autocast", "bf16", "fp16")
MEMORY_PLANS = ("upstream", "lean", "offload")
APPROX_KERNELS = ("auto", "flex", "dense")
LINEAR_PRECISIONS = ("bf16", "fp8")
COMPILE_MODES = ("off", "default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")

# fidelity of a knob: what changing it does to the function the model computes
SAME = "same"            # any value computes the same function (an execution strategy)
APPROX = "approx"        # an approximation: exact only at the field's ``exact`` value
PRECISION = "precision"  # arithmetic precision: same function, different rounding


def knob(default, *, help: str, choices=None, minimum=None, maximum=None, fidelity: str = SAME, exact=None,
         applied: str = "configure", open_min: bool = False, open_max: bool = False):
    """A dataclass field with the metadata every consumer of a knob reads.

    choices: the allowed values (a tuple, or a zero-argument callable for a registry);
    minimum/maximum: bounds for numbers (``maximum`` may name a limit given to ``validate_fields``,
    e.g. ``"depth"``), inclusive unless ``open_min``/``open_max`` exclude them (``(0, 1]``);
    fidelity: SAME, APPROX (with ``exact``: the value at which it is exact) or
    PRECISION; applied: ``configure`` (handed to ``VGGT.configure``), ``build`` (applied once when the
    model is built: precision, compile) or ``harness`` (how the harness calls the model).
    """
    meta = dict(help=help, choices=choices, minimum=minimum, maximum=maximum, fidelity=fidelity, exact=exact,
                applied=applied, open_min=open_min, open_max=open_max)
    return field(default=default, metadata=meta)


def knob_fields(cls) -> list:
    """The fields of a dataclass declared with ``knob()``, in declaration order."""
    return [f for f in dataclasses.fields(cls) if "fidelity" in f.metadata]


def validate_fields(cls, values, prefix: str = "", **limits) -> None:
    """Check ``values`` (a mapping or an object with attributes) against ``cls``'s knob metadata.

    Raises ConfigError with one line in one format: ``unknown model.frame_exec 'x'; choose one of
    [...]`` or ``model.prune_depth must be in 0..24 (depth), got 30`` (an open bound in interval
    notation: ``model.kv_keep must be in (0, 1], got 0``).
    """
    get = values.get if hasattr(values, "get") else (lambda name, default=None: getattr(values, name, default))
    for f in knob_fields(cls):
        value = get(f.name, f.default)
        meta = f.metadata
        choices = meta["choices"]() if callable(meta["choices"]) else meta["choices"]
        if choices is not None and value not in choices:
            raise ConfigError(f"unknown {prefix}{f.name} {value!r}; choose one of {list(choices)}")
        lo, hi = meta["minimum"], meta["maximum"]
        if lo is None and hi is None:
            continue
        why = ""
        if isinstance(hi, str):
            why, hi = f" ({hi})", limits.get(hi)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{prefix}{f.name} must be a number, got {value!r}")
        open_lo, open_hi = meta.get("open_min", False), meta.get("open_max", False)
        below = lo is not None and (value <= lo if open_lo else value < lo)
        above = hi is not None and (value >= hi if open_hi else value > hi)
        if below or above:
            if lo is not None and hi is not None and (open_lo or open_hi):
                span = f"in {'(' if open_lo else '['}{lo:g}, {hi:g}{')' if open_hi else ']'}"
            elif lo is not None and hi is not None:
                span = f"in {lo}..{hi}"
            elif lo is not None:
                span = f"{'>' if open_lo else '>='} {lo}"
            else:
                span = f"{'<' if open_hi else '<='} {hi}"
            raise ConfigError(f"{prefix}{f.name} must be {span}{why}, got {value:g}" if isinstance(value, float)
                              else f"{prefix}{f.name} must be {span}{why}, got {value}")


def _backend_names():
    from .attention import AUTO, BACKENDS  # local: attention imports nothing from here

    return tuple(BACKENDS) + (AUTO,)


def _global_backend_names():
    return ("same",) + _backend_names()


@dataclass
class ExecutionConfig:
    """How the model runs. Never changes the state dict.

    frame_exec: ``fused`` folds the S frames of every batch item into the batch (one call per
        frame layer); ``sequential`` runs every frame on its own (B*S calls per layer, the seed's
        baseline); ``chunked`` runs ``frame_chunk`` frames per call.
    prune_depth: the first k global layers attend within each frame only (global-to-frame
        conversion; k=0 is upstream). ``prune_weights`` says whose weights a converted layer
        uses: the global block's own (``global``, as AVGGT) or the frame block's again (``frame``).
    kv_keep, merge_ratio, global_sparsity: approximations of the global layers' attention
        (``vggt_model.approximate``: K/V subsampling as AVGGT, token merging as FastVGGT, block-sparse
        attention as Faster VGGT), at most one at a time, on the global layers ``approx_layers`` names
        that ``prune_depth`` did not convert; each is exact at its default (1, 0, 0).
    attention: name of a backend in ``vggt_model.attention.BACKENDS`` (or ``auto``), at every site;
        ``global_attention`` overrides it at the global layers.
    dtype, tf32, compile: applied when the model is built (``vggt_model.execution``).
    cuda_graph: the caller replays the forward as one CUDA graph (``GraphedForward``).
    nvtx: emit NVTX / profiler ranges around every stage.
    memory_plan, token_chunk: how much memory the same function holds (``Aggregator``).
    context_parallel: the frames of a scene sharded over that many ranks (``model.context_parallel``).
    """

    frame_exec: str = knob("fused", choices=FRAME_EXEC, help="frame attention: all frames in one call, one per call, or frame_chunk per call")
    frame_chunk: int = knob(8, minimum=1, help="frames per call with frame_exec=chunked")
    prune_depth: int = knob(0, minimum=0, maximum="depth", fidelity=APPROX, exact=0,
                            help="the first k global layers attend within each frame only (global-to-frame conversion)")
    prune_weights: str = knob("global", choices=PRUNE_WEIGHTS, fidelity=APPROX,
                              help="weights of a converted layer: the global block's own or the frame block's")
    kv_keep: float = knob(1.0, minimum=0.0, maximum=1.0, open_min=True, fidelity=APPROX, exact=1.0,
                          help="global layers attend to this fraction of the other frames' patch tokens (a strided "
                               "grid; own frame and camera/register tokens whole; the rest as one mean key/value per "
                               "frame, weighted by its count), as AVGGT (arXiv 2512.02541); 1: exact")
    merge_ratio: float = knob(0.0, minimum=0.0, maximum=1.0, open_max=True, fidelity=APPROX, exact=0.0,
                              help="fraction of the tokens merged into their most similar destination token before "
                                   "global attention and copied back after (first frame, camera/register and salient "
                                   "tokens never merged), as FastVGGT (arXiv 2509.02560); 0: exact")
    global_sparsity: float = knob(0.0, minimum=0.0, maximum=1.0, open_max=True, fidelity=APPROX, exact=0.0,
                                  help="fraction of the 128-token key blocks each query block of patch tokens skips in "
                                       "global attention, chosen by mean-pooled Q.K scores (own frame and "
                                       "camera/register blocks always kept; run as model.approx_kernel says), as "
                                       "Faster VGGT (arXiv 2509.07120); 0: exact")
    approx_kernel: str = knob("auto", choices=APPROX_KERNELS, fidelity=APPROX,
                              help="how kv_keep and global_sparsity run: flex (flex attention with a block mask; "
                                   "for kv_keep a score_mod over every key), dense (kv_keep: own frame, the other "
                                   "frames' kept tokens and their mean tokens as three dense attentions merged by "
                                   "log-sum-exp; global_sparsity: FlashAttention-4's block-sparse forward on each "
                                   "query block's compact list of key blocks; each on FlashAttention-4 where it "
                                   "runs, else PyTorch ops), or auto (both timed at the first layer, the faster "
                                   "kept); the same function")
    linear_precision: str = knob("bf16", choices=LINEAR_PRECISIONS, fidelity=APPROX, exact="bf16",
                                 help="the transformer blocks' linear layers: bf16, or fp8 (e4m3 with a scale per "
                                      "token and per output channel, torch._scaled_mm; needs model.dtype=bf16 and a "
                                      "GPU with FP8 tensor cores, compute capability 8.9+); an approximation")
    approx_layers: str = knob("all", fidelity=APPROX,
                              help="global layers kv_keep / merge_ratio / global_sparsity apply to: all, or a-b "
                                   "(0-based, inclusive); layers below prune_depth stay converted")
    attention: str = knob("sdpa", choices=_backend_names,
                          help="attention backend at every site (python -m vggt_bench backends); auto: the fastest "
                               "exact kernel, timed per site, shape and dtype at the first call")
    global_attention: str = knob("same", choices=_global_backend_names,
                                 help="the global layers' backend (same: as attention); frame layers, the patch embed "
                                      "and the heads keep attention")
    dtype: str = knob("fp32", choices=PRECISIONS, fidelity=PRECISION, applied="build",
                      help="fp32; bf16_autocast (upstream's: fp32 weights, bf16 aggregator); bf16 or fp16 weights")
    tf32: bool = knob(False, fidelity=PRECISION, applied="build", help="TF32 for fp32 matmuls and convolutions")
    compile: str = knob("off", choices=COMPILE_MODES, applied="build", help="torch.compile every transformer block")
    cuda_graph: bool = knob(False, applied="harness", help="replay the forward as one CUDA graph (GPU)")
    nvtx: bool = knob(False, help="NVTX and profiler ranges around every stage")
    memory_plan: str = knob("lean", choices=MEMORY_PLANS,
                            help="upstream: every layer returns new tensors (upstream's code); lean: one residual stream "
                                 "updated in place, per-token work over token chunks; offload: lean, kept layer outputs "
                                 "in pinned host memory")
    token_chunk: int = knob(8192, minimum=0,
                            help="tokens per chunk of the per-token work under the lean and offload plans (0: no chunks)")
    context_parallel: int = knob(1, minimum=1,
                                 help="ranks (torch.distributed) one scene's frames are sharded over; global attention "
                                      "stays exact through all-to-all over heads (DeepSpeed-Ulysses), the heads' outputs "
                                      "are gathered")

    def validate(self, depth: int, prefix: str = "") -> "ExecutionConfig":
        validate_fields(type(self), self, prefix, depth=depth)
        self.check_approximations(depth, prefix)
        return self

    def approximations(self) -> list:
        """Names of the global-attention approximations that are on (not at their exact value)."""
        return [name for name in APPROXIMATE_ATTENTION if getattr(self, name) != _EXACT[name]]

    def approx_range(self, depth: int, prefix: str = "") -> tuple:
        """``(first, last)`` global layer (inclusive) that ``approx_layers`` names, within ``0..depth-1``."""
        text = str(self.approx_layers).strip()
        if text == "all":
            return 0, depth - 1
        parts = text.split("-")
        try:
            first, last = (int(parts[0]), int(parts[-1])) if 1 <= len(parts) <= 2 else (None, None)
        except ValueError:
            first = last = None
        if first is None or not 0 <= first <= last <= depth - 1:
            raise ConfigError(f"{prefix}approx_layers must be all or a layer range a-b within 0..{depth - 1} "
                              f"(depth), got {text!r}")
        return first, last

    def check_approximations(self, depth: int, prefix: str = "") -> None:
        """Cross-field checks: one attention approximation at a time, on layers that are still global."""
        first, last = self.approx_range(depth, prefix)
        on = self.approximations()
        if len(on) > 1:
            values = " and ".join(f"{prefix}{n}={getattr(self, n):g}" for n in on)
            raise ConfigError(f"{values} cannot run together: each replaces the global layers' attention; "
                              f"sweep them as separate points (each combines with {prefix}prune_depth)")
        if on and last < self.prune_depth:
            raise ConfigError(f"{prefix}{on[0]}={getattr(self, on[0]):g} has no global layer to act on: "
                              f"{prefix}approx_layers={self.approx_layers} ({first}..{last}) are all converted to "
                              f"frame attention by {prefix}prune_depth={self.prune_depth}")

    def approximated(self, layer: int, depth: int) -> bool:
        """Whether global layer ``layer`` runs an attention approximation (``vggt_model.approximate``)."""
        if not self.approximations() or layer < self.prune_depth:
            return False
        first, last = self.approx_range(depth)
        return first <= layer <= last

    def exact(self) -> "ExecutionConfig":
        """The same execution with every approximation at its exact value (the exact model)."""
        return dataclasses.replace(self, **{f.name: f.metadata["exact"] for f in knob_fields(type(self))
                                            if f.metadata["fidelity"] == APPROX and f.metadata["exact"] is not None})

    def is_exact(self) -> bool:
        """True when no approximation is on (every APPROX knob with an ``exact`` value holds it)."""
        return all(getattr(self, f.name) == f.metadata["exact"] for f in knob_fields(type(self))
                   if f.metadata["fidelity"] == APPROX and f.metadata["exact"] is not None)

    def replace(self, **changes) -> "ExecutionConfig":
        return dataclasses.replace(self, **changes)


# The global-attention approximations (vggt_model.approximate), one field each, and their exact values.
APPROXIMATE_ATTENTION = ("kv_keep", "merge_ratio", "global_sparsity")
_EXACT = {f.name: f.metadata["exact"] for f in knob_fields(ExecutionConfig) if f.name in APPROXIMATE_ATTENTION}
