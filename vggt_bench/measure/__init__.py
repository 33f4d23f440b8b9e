"""Measuring a point: the layer above ``core``.

``point`` (resolve a configuration), ``build`` (the model held, inputs, the forward), ``timing``,
``drift`` (output drift and its references), ``record`` (the typed ``Measurement`` and its row),
``run`` (``run_point``: measure one point, in this process or on context-parallel ranks), ``ranks``
(starting and joining ranks), ``telemetry`` and ``noise`` (how far to trust a row), ``env``,
``gpus`` and ``flops`` (what a row records beside its timing), ``upstream`` (facebookresearch/vggt's
own code as a model). Modules here import ``core`` and each other, nothing above.
"""
