"""Training (PyTorch, the ``[train]`` extra): networks, the training loop and bundle writing.

``networks`` (MobileNets, the fracture head), ``two_stage`` (the serving wrappers that are
exported), ``bank`` (preprocessed images in memory), ``train`` (``ossa train``: presets,
augmentation, the loop, checkpoints), ``calibrate`` (thresholds chosen on validation) and
``bundle`` (``.pt`` and ONNX files).
"""
