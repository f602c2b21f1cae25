"""Serving: a verified bundle in, predictions and findings out (numpy, ONNX Runtime; no torch).

``manifest`` (bundles and their checks), ``taxonomy`` (classes and codes), ``enhance``
(preprocessing, shared with training), ``engine`` (routing, flip averaging, image scores),
``onnx`` (the ONNX Runtime backend), ``abstention`` (not assessed), ``findings`` (boxes from
fracture maps), ``results`` (image and study predictions) and ``predict`` (the classifier).
Nothing here imports torch or :mod:`models.training`, except ``predict.make_runner`` for the
optional torch backend (the contract in ``pyproject.toml``'s ``[tool.importlinter]``).
"""
