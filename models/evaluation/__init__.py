"""Evaluation on the base install (no torch): ``ossa evaluate`` and what it reports.

``evaluate`` (the command), ``metrics`` (accuracy, kappa, AUROC with bootstrap intervals),
``report`` (``metrics.json``, plots, ``report.md``), ``localisation`` (hit rates, FROC,
``findings.csv``) and ``model_card`` (a bundle's ``MODEL_CARD.md``).
"""
