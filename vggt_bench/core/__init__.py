"""The bottom layer: what every command shares and nothing of measuring.

``errors`` (user errors, exit codes, one-line failures), ``schema`` (the tables' column
contracts), ``config`` (the commands' Hydra schemas), ``overrides`` (command-line keys checked
against them), ``resources`` (the package's presets and templates) and ``results`` (the results
store). Modules here import nothing else of vggt_bench.
"""
