"""Model export for the Triton repositories (``python -m ops.models``; see docs/MODELS.md).

"What to run" lives here: building a network, exporting it to ONNX with the preprocessing folded in, and
writing whole model folders (config, ``model.py``, weights) into ``model_repository/cpu`` or ``.../gpu``.
"""
