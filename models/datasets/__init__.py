"""Labelled data (no torch): loaders, the box format, importers and the phantom.

``data`` (MURA-v1.1 and generic labelled datasets, image reading), ``boxes`` (finding boxes as
COCO JSON), ``layout`` (MURA-v1.1 paths), ``fracatlas`` (``ossa data import-fracatlas``) and
``phantom`` (``ossa phantom``, procedural radiographs in MURA-v1.1 layout).
"""
