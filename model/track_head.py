"""Track head: a feature-only DPT head followed by the iterative tracker."""

from __future__ import annotations

import torch.nn as nn

from .config import TrackHeadConfig
from .dpt_head import DPTHead
from .tracker import Tracker


class TrackHead(nn.Module):
    """Layer outputs + query points ``[B, N, 2]`` (pixels, frame 0) -> tracks in every frame.

    Returns ``(track_list, vis, conf, feature_maps)``: ``track_list`` holds ``[B, S, N, 2]``
    per iteration (pixels), ``vis``/``conf`` are ``[B, S, N]`` after sigmoid, and
    ``feature_maps`` is ``[B, S, features, H/2, W/2]``.
    """

    def __init__(self, cfg: TrackHeadConfig):
        super().__init__()
        self.cfg = cfg
        self.feature_extractor = DPTHead(cfg.feature_extractor_config())
        self.tracker = Tracker(cfg.tracker_config())

    def forward(self, aggregated: list, images, patch_start_idx: int, query_points, gather=None):
        """``gather``: under context parallelism, the rank's feature maps -> every frame's (the tracker
        attends across frames)."""
        fmaps = self.feature_extractor(aggregated, images, patch_start_idx)
        if gather is not None:
            fmaps = gather(fmaps)
        track_list, vis, conf = self.tracker(query_points, fmaps, iters=self.cfg.iters)
        return track_list, vis, conf, fmaps
