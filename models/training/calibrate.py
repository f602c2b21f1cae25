"""After training: choose thresholds on the validation split, evaluate, write the bundle.

Everything here is chosen on the validation split, never on the training images:

* **Abstention.** ``min_probability`` is the lowest stage-1 top-class probability that keeps
  :data:`KEEP_IN_SCOPE` (99%) of the in-scope validation images (the 1st percentile of their
  top-class probabilities); ``ood_threshold`` is likewise the 99th percentile of their
  out-of-distribution scores, whose statistics are fitted on the in-scope *training* images'
  features (:class:`models.serving.abstention.OodModel`).
* **Operating thresholds**, one per assessed class, by the rule the user names
  (``--threshold``): ``0.5`` (or any fixed value), ``youden`` (maximises sensitivity +
  specificity - 1 on the class's validation studies), or ``sensitivity=0.9`` (the highest
  threshold whose study-level sensitivity reaches 0.9). The threshold is set halfway between
  the chosen study probability and the next lower one, so that no validation study sits on it.
  A class whose validation studies lack normal or abnormal ones keeps 0.5.
* **Image score** (bundles trained with finding boxes): ``pooled``, ``map`` or ``blend``
  (:func:`models.serving.engine.image_scores`), whichever gives the highest mean study-level AUROC
  over the assessed classes (oracle routing); the others' AUROCs are kept in the metrics. A
  bundle trained without boxes keeps ``pooled`` and reports no findings.
* **Finding threshold**, one per assessed class: the 95th percentile of the highest map cell
  of the class's *normal* validation images (at least :data:`MIN_NORMALS`), so that about one
  normal film in twenty has a region above it (an image below its operating threshold gets no
  findings at all, :mod:`models.serving.findings`).

The validation metrics stored in the manifest come from the same code as ``ossa evaluate``;
they are optimistic for the thresholds, which were chosen on the same split.
"""

from __future__ import annotations

import argparse
import logging
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from models.serving.abstention import OodModel, decide
from models.serving.engine import TwoStageEngine
from models.serving.enhance import Preprocessing
from models.serving.manifest import IMAGE_SCORES, Abstention, Localisation
from models.serving.results import ImagePrediction
from models.serving.taxonomy import Taxonomy

logger = logging.getLogger(__name__)

#: Share of in-scope validation images each abstention threshold keeps.
KEEP_IN_SCOPE = 0.99
#: Threshold of a class whose validation studies cannot choose one.
DEFAULT_THRESHOLD = 0.5
#: Share of normal validation images whose highest map cell stays under the finding threshold.
NORMAL_QUIET = 0.95
#: Fewest normal validation images of a class that can choose its finding threshold.
MIN_NORMALS = 5
_SENSITIVITY_RULE = re.compile(r"^sensitivity=(0\.\d*[1-9]\d*|1(\.0+)?)\Z")


def parse_threshold_rule(rule: str) -> str:
    """Validate a ``--threshold`` rule: ``youden``, ``sensitivity=S`` or a number in [0, 1]."""
    if rule == "youden" or _SENSITIVITY_RULE.match(rule):
        return rule
    try:
        value = float(rule)
    except ValueError:
        value = math.nan
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(
            f"threshold must be 'youden', 'sensitivity=S' (0 < S <= 1) or a number in [0, 1], "
            f"got {rule!r}"
        )
    return rule


def choose_threshold(labels: NDArray[np.integer], probabilities: NDArray[np.floating],
                     rule: str) -> float:
    """The operating threshold of one class from its validation studies.

    Parameters
    ----------
    labels : numpy.ndarray
        1 = abnormal, 0 = normal, one per study.
    probabilities : numpy.ndarray
        Study probabilities of abnormality.
    rule : str
        See :func:`parse_threshold_rule`.
    """
    rule = parse_threshold_rule(rule)
    if rule != "youden" and not rule.startswith("sensitivity="):
        return float(rule)
    y = np.asarray(labels).astype(bool)
    p = np.asarray(probabilities, dtype=np.float64)
    if y.all() or not y.any():
        return DEFAULT_THRESHOLD
    candidates = np.unique(p)[::-1]  # descending: each is "abnormal when p >= t"
    sensitivity = np.array([(p[y] >= t).mean() for t in candidates])
    specificity = np.array([(p[~y] < t).mean() for t in candidates])
    if rule == "youden":
        best = int(np.argmax(sensitivity + specificity - 1.0))
    else:
        target = float(rule.split("=", 1)[1])
        reaching = np.flatnonzero(sensitivity >= target - 1e-12)
        best = int(reaching[0]) if len(reaching) else len(candidates) - 1
    # Halfway to the next lower probability: the same calls on the validation studies, but no
    # study sits on the threshold, where float rounding between backends would flip it.
    lower = candidates[best + 1] if best + 1 < len(candidates) else candidates[best]
    return float((candidates[best] + lower) / 2)


@dataclass(frozen=True)
class Calibration:
    """What :func:`calibrate` chose on the validation split."""

    abstention: Abstention
    ood: OodModel
    thresholds: dict[str, float]
    predictions: list[ImagePrediction]
    oracle_probability: NDArray[np.float32]
    localisation: Localisation = field(default_factory=Localisation)
    score_auroc: dict[str, dict[str, float]] | None = None


def _in_scope(classes: NDArray[np.int64], taxonomy: Taxonomy) -> NDArray[np.bool_]:
    assessed = np.array([taxonomy.is_assessed(n) for n in taxonomy.names])
    return assessed[classes]


def study_probabilities(predictions: Sequence[ImagePrediction], studies: NDArray[np.int64]
                        ) -> dict[int, float]:
    """Mean abnormality probability of each study's assessed images (studies without any
    assessed image are left out)."""
    sums: dict[int, list[float]] = {}
    for p, s in zip(predictions, studies, strict=True):
        if p.abnormal_probability is not None:
            sums.setdefault(int(s), []).append(p.abnormal_probability)
    return {s: float(np.mean(v)) for s, v in sums.items()}


def _study_auroc(labels: NDArray[np.int64], scores: NDArray[np.floating],
                 studies: NDArray[np.int64]) -> float:
    """Study-level AUROC (a study's score is its images' mean); NaN without both labels."""
    from models.evaluation.metrics import auroc

    keys = np.unique(studies)
    y = np.array([labels[studies == k][0] for k in keys])
    p = np.array([np.nanmean(scores[studies == k]) for k in keys])
    if y.min(initial=1) == y.max(initial=0):
        return math.nan
    return float(auroc(y, p))


def choose_localisation(taxonomy: Taxonomy, scores: Mapping[str, NDArray[np.floating]],
                        maps: NDArray[np.floating], classes: NDArray[np.int64],
                        labels: NDArray[np.int64], studies: NDArray[np.int64]
                        ) -> tuple[Localisation, dict[str, dict[str, float]]]:
    """The image score and finding thresholds from oracle-routed validation outputs.

    Parameters
    ----------
    taxonomy : Taxonomy
        The bundle's classes.
    scores : mapping
        Every image score (:func:`models.serving.engine.image_scores`) of the in-scope images.
    maps : numpy.ndarray
        Their fracture maps.
    classes, labels, studies : numpy.ndarray
        Their true class index, label and study.

    Returns
    -------
    tuple
        The :class:`Localisation` and each score's study AUROC per assessed class.
    """
    auc = {rule: {name: _study_auroc(labels[classes == taxonomy.index(name)],
                                     scores[rule][classes == taxonomy.index(name)],
                                     studies[classes == taxonomy.index(name)])
                  for name in taxonomy.assessed} for rule in IMAGE_SCORES}
    mean = {rule: float(np.nanmean(list(v.values()))) if any(np.isfinite(list(v.values())))
            else math.nan for rule, v in auc.items()}
    ranked = [rule for rule in IMAGE_SCORES if np.isfinite(mean[rule])]
    chosen = max(ranked, key=lambda r: mean[r]) if ranked else "pooled"
    finding_thresholds = {}
    for name in taxonomy.assessed:
        normal = (classes == taxonomy.index(name)) & (labels == 0)
        if normal.sum() < MIN_NORMALS:
            finding_thresholds[name] = DEFAULT_THRESHOLD
            continue
        peaks = np.nanmax(maps[normal].reshape(int(normal.sum()), -1), axis=1)
        finding_thresholds[name] = float(np.quantile(peaks, NORMAL_QUIET, method="higher"))
    rule = (f"image score {chosen!r}: the highest mean validation study AUROC over the "
            f"assessed classes ({', '.join(f'{r} {mean[r]:.3f}' for r in IMAGE_SCORES)}); "
            f"finding thresholds: the {NORMAL_QUIET:.0%} quantile of the highest map cell of "
            f"each class's normal validation images ({MIN_NORMALS} at least, else "
            f"{DEFAULT_THRESHOLD})")
    return Localisation(image_score=chosen, finding_thresholds=finding_thresholds,
                        rule=rule), auc


def calibrate(engine: TwoStageEngine, *, train_images: NDArray[np.float32],
              train_classes: NDArray[np.int64], valid_images: NDArray[np.float32],
              valid_classes: NDArray[np.int64], valid_labels: NDArray[np.int64],
              valid_studies: NDArray[np.int64], threshold_rule: str,
              with_boxes: bool = False) -> Calibration:
    """Choose the abstention and operating thresholds on the validation split.

    Parameters
    ----------
    engine : TwoStageEngine
        The trained networks (any backend).
    train_images, valid_images : numpy.ndarray
        Preprocessed inputs (N x C x S x S).
    train_classes, valid_classes : numpy.ndarray
        True class index of each image (into the engine's taxonomy).
    valid_labels : numpy.ndarray
        1 = abnormal, per validation image (its study's label).
    valid_studies : numpy.ndarray
        Study index of each validation image.
    threshold_rule : str
        ``--threshold`` rule (:func:`choose_threshold`).
    with_boxes : bool
        Whether the fracture maps were trained with boxes: then the image score and the
        finding thresholds are chosen too (:func:`choose_localisation`); the engine's
        ``image_score`` is set to the choice.
    """
    taxonomy = engine.taxonomy
    train_in = _in_scope(train_classes, taxonomy)
    train_features = engine.body_parts(train_images[train_in])[1]
    ood = OodModel.fit(train_features, train_classes[train_in])

    valid_in = _in_scope(valid_classes, taxonomy)
    localisation, score_auroc = Localisation(), None
    oracle_scores: dict[str, NDArray[np.float32]] = {}
    if valid_in.any():
        oracle_scores, oracle_maps = engine.abnormal(valid_images[valid_in],
                                                     valid_classes[valid_in], maps=with_boxes)
        if with_boxes:
            localisation, score_auroc = choose_localisation(
                taxonomy, oracle_scores, oracle_maps, valid_classes[valid_in],
                valid_labels[valid_in], valid_studies[valid_in])
    engine.image_score = localisation.image_score
    output = engine.predict(valid_images)
    if valid_in.any():
        top = output.body_part_probabilities.max(axis=1)[valid_in]
        min_probability = float(np.quantile(top, 1.0 - KEEP_IN_SCOPE, method="lower"))
        scores = ood.score(output.features[valid_in])
        ood_threshold = float(np.quantile(scores, KEEP_IN_SCOPE, method="higher"))
    else:
        min_probability, ood_threshold = 0.0, math.inf
    abstention = Abstention(
        min_probability=min(max(min_probability, 0.0), 1.0),
        ood_threshold=ood_threshold if math.isfinite(ood_threshold) else None,
        rule=(f"min_probability and ood_threshold each keep {KEEP_IN_SCOPE:.0%} of the "
              f"{int(valid_in.sum())} in-scope validation images; OOD statistics fitted on "
              f"{int(train_in.sum())} in-scope training images"),
    )
    predictions = decide(output, taxonomy, abstention, ood if abstention.ood_threshold else None)

    thresholds = {}
    per_study = study_probabilities(predictions, valid_studies)
    study_class = {int(s): int(c) for s, c in zip(valid_studies, valid_classes, strict=True)}
    study_label = {int(s): int(y) for s, y in zip(valid_studies, valid_labels, strict=True)}
    for name in taxonomy.assessed:
        k = taxonomy.index(name)
        keys = [s for s in per_study if study_class[s] == k]
        labels = np.array([study_label[s] for s in keys], dtype=np.int64)
        probs = np.array([per_study[s] for s in keys], dtype=np.float64)
        thresholds[name] = (choose_threshold(labels, probs, threshold_rule) if len(keys)
                            else DEFAULT_THRESHOLD)

    oracle = np.full(len(valid_classes), np.nan, dtype=np.float32)
    if valid_in.any():
        oracle[valid_in] = oracle_scores[localisation.image_score]
    logger.info("calibrated: min body-part probability %.3f, OOD threshold %s, thresholds %s, "
                "image score %s, finding thresholds %s", abstention.min_probability,
                abstention.ood_threshold, {k: round(v, 3) for k, v in thresholds.items()},
                localisation.image_score,
                {k: round(v, 3) for k, v in localisation.finding_thresholds.items()})
    return Calibration(abstention, ood, thresholds, predictions, oracle, localisation,
                       score_auroc)


def weak_classes(taxonomy: Taxonomy, oracle_probability: NDArray[np.floating],
                 valid_classes: NDArray[np.int64], valid_labels: NDArray[np.int64],
                 valid_studies: NDArray[np.int64], *, min_auroc: float,
                 min_positives: int) -> dict[str, str]:
    """Assessed classes whose stage-2 network does not reach the bar on validation.

    A class fails when its validation split has fewer than ``min_positives`` abnormal (or
    normal) studies, too few to show that its network works, or when the study-level AUROC of
    its network on its own studies (oracle routing, study probability = mean of its images) is
    below ``min_auroc``. Returns each failing class with the reason, in words.
    """
    from models.evaluation.metrics import auroc

    weak = {}
    for name in taxonomy.assessed:
        rows = np.flatnonzero(valid_classes == taxonomy.index(name))
        studies = np.unique(valid_studies[rows])
        probs = np.array([np.nanmean(oracle_probability[rows][valid_studies[rows] == s])
                          for s in studies])
        labels = np.array([valid_labels[rows][valid_studies[rows] == s][0] for s in studies])
        positives, negatives = int(labels.sum()), int(len(labels) - labels.sum())
        if min(positives, negatives) < min_positives:
            weak[name] = (f"too few validation studies to show that it works ({positives} "
                          f"abnormal, {negatives} normal; at least {min_positives} of each "
                          f"needed)")
            continue
        area = float(auroc(labels, probs))
        if not area >= min_auroc:
            weak[name] = f"validation AUROC {area:.3f} is below the minimum {min_auroc:.2f}"
    return weak


def calibrate_and_save(network: Any, *, train: Any, valid: Any, valid_studies: Sequence[Any],
                       taxonomy: Taxonomy, preprocessing: Preprocessing,
                       args: argparse.Namespace, training: Mapping[str, Any],
                       device: Any) -> Path:
    """Calibrate a trained network on the validation split, evaluate it, write the bundle.

    Parameters
    ----------
    network : models.training.two_stage.TwoStageNetwork
        The trained networks.
    train, valid : models.training.bank.ImageBank
        Preprocessed train and validation images (``images``, ``classes``, ``labels``,
        ``studies``).
    valid_studies : sequence of models.datasets.data.MuraStudy
        The validation studies (``valid.studies`` indexes them).
    taxonomy : Taxonomy
        The network's classes.
    preprocessing : Preprocessing
        How the images were preprocessed (stored in the manifest).
    args : argparse.Namespace
        Resolved ``ossa train`` options (``threshold``, ``flip_tta``, ``out``, ``name``,
        ``overwrite``, ``arch``, ``width_mult``, ``input_size``...).
    training : mapping
        Provenance written into the manifest.
    device : torch.device
        Where the network is.
    """
    from models.evaluation.report import EvaluatedImage, compute_metrics
    from models.training.bundle import save_bundle
    from models.training.two_stage import TorchRunner, TwoStageNetwork

    valid_classes = valid.classes.numpy().astype(np.int64)
    valid_labels = valid.labels.numpy().astype(np.int64)
    valid_study_index = valid.studies.numpy().astype(np.int64)
    train_images = train.images.float().numpy()
    train_classes = train.classes.numpy().astype(np.int64)
    valid_images = valid.images.float().numpy()
    with_boxes = bool(train.annotated is not None and train.annotated.any())

    def run(net: TwoStageNetwork) -> Calibration:
        engine = TwoStageEngine(TorchRunner(net, device), net.taxonomy,
                                flip_tta=args.flip_tta, batch_size=16)
        return calibrate(engine, train_images=train_images, train_classes=train_classes,
                         valid_images=valid_images, valid_classes=valid_classes,
                         valid_labels=valid_labels, valid_studies=valid_study_index,
                         threshold_rule=str(args.threshold), with_boxes=with_boxes)

    result = run(network)
    weak = weak_classes(taxonomy, result.oracle_probability, valid_classes, valid_labels,
                        valid_study_index, min_auroc=args.min_auroc,
                        min_positives=args.min_positives)
    for name, reason in weak.items():
        logger.warning("class %s is not assessed: %s", name, reason)
    if weak:
        if set(weak) == set(taxonomy.assessed):
            raise ValueError(f"no class reaches the bar on validation: {weak}")
        taxonomy = Taxonomy(tuple(replace(c, assessed=c.assessed and c.name not in weak)
                                  for c in taxonomy))
        network = TwoStageNetwork(network.body_part,
                                  {k: network.abnormal[k] for k in taxonomy.assessed}, taxonomy)
        result = run(network)
    rows = []
    for i, p in enumerate(result.predictions):
        study = valid_studies[int(valid_study_index[i])]
        oracle = float(result.oracle_probability[i])
        rows.append(EvaluatedImage(
            path=str(i), study=study.key, true_type=taxonomy.names[int(valid_classes[i])],
            label=int(valid_labels[i]), pred_type=p.body_part,
            type_probability=p.body_part_probability, assessed=p.assessed,
            abnormal_probability=p.abnormal_probability,
            oracle_probability=None if math.isnan(oracle) else oracle,
        ))
    metrics = compute_metrics(rows, classes=taxonomy.names, assessed_classes=taxonomy.assessed,
                              thresholds=result.thresholds, n_bootstrap=200, seed=0)
    if result.score_auroc is not None:
        metrics["image_score_auroc"] = result.score_auroc
    metrics["not_assessed_classes"] = {
        **{c.name: "out of scope" for c in taxonomy if not c.assessed and c.name not in weak},
        **weak,
    }
    return save_bundle(
        args.out, network, architecture=args.arch, width_mult=args.width_mult,
        preprocessing=preprocessing, thresholds=result.thresholds,
        threshold_rule=str(args.threshold), abstention=result.abstention,
        ood=result.ood if result.abstention.ood_threshold is not None else None,
        flip_tta=args.flip_tta, localisation=result.localisation,
        body_part_pool=args.body_part_pool, training=training, metrics=metrics,
        name=args.name, overwrite=args.overwrite,
    )
