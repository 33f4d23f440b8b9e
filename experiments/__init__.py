"""Hydra presets (YAML only), installed as the package data ``vggt_bench.experiments``."""
