"""Tests of abstention and the out-of-distribution score (models.serving.abstention)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from numpy.typing import NDArray

from models.serving.abstention import OodModel, decide
from models.serving.engine import EngineOutput
from models.serving.manifest import Abstention
from models.serving.taxonomy import Taxonomy

TAXONOMY = Taxonomy.from_names(["ELBOW", "WRIST", "OTHER"])
#: Two classes in 4-D sharing an anisotropic covariance: std 10 along axis 0, 1 elsewhere.
STD = np.array([10.0, 1.0, 1.0, 1.0])
MEANS = np.array([[0.0, 0.0, 0.0, 0.0], [5.0, 0.0, 0.0, 40.0]])


@pytest.fixture(scope="module")
def clusters() -> tuple[NDArray[np.float64], NDArray[np.int64]]:
    rng = np.random.default_rng(0)
    labels = np.repeat([0, 1], 2000)
    features = MEANS[labels] + rng.normal(size=(len(labels), 4)) * STD
    return features, labels


@pytest.fixture(scope="module")
def fitted(clusters: tuple[NDArray[np.float64], NDArray[np.int64]]) -> OodModel:
    return OodModel.fit(*clusters)


def reference_score(features: NDArray[np.float64], labels: NDArray[np.int64],
                    points: NDArray[np.float64]) -> NDArray[np.float64]:
    """Mahalanobis distance to the nearest class mean with the shrunk pooled covariance, in
    the original space (all components kept, so the principal rotation changes nothing)."""
    means = np.stack([features[labels == c].mean(axis=0) for c in (0, 1)])
    residual = features - means[labels]
    covariance = residual.T @ residual / (len(features) - 2)
    ridge = 0.05 * np.trace(covariance) / covariance.shape[0]
    precision = np.linalg.inv(covariance + ridge * np.eye(len(covariance)))
    diff = points[:, None, :] - means[None]
    return np.sqrt(np.einsum("nck,kl,ncl->nc", diff, precision, diff).min(axis=1))


# --- OodModel.fit / score --------------------------------------------------------------------


def test_fit_shapes_and_dtypes(fitted: OodModel) -> None:
    assert fitted.mean.shape == (4,)
    assert fitted.components.shape == (4, 4)  # min(32, D, N - 1)
    assert fitted.class_means.shape == (2, 4)
    assert fitted.precision.shape == (4, 4)
    assert all(a.dtype == np.float32 for a in (fitted.mean, fitted.components,
                                                fitted.class_means, fitted.precision))
    np.testing.assert_allclose(fitted.components @ fitted.components.T, np.eye(4), atol=1e-5)


def test_points_near_class_means_score_low_far_points_high(fitted: OodModel) -> None:
    near = fitted.score(MEANS)
    far = fitted.score(MEANS + np.array([0.0, 30.0, 0.0, 0.0]))
    assert near.dtype == np.float32
    assert (near < 0.2).all()
    assert (far > 15.0).all()


def test_score_matches_a_direct_mahalanobis_computation(
        clusters: tuple[NDArray[np.float64], NDArray[np.int64]], fitted: OodModel) -> None:
    rng = np.random.default_rng(1)
    points = rng.normal(size=(20, 4)) * 15.0
    np.testing.assert_allclose(fitted.score(points), reference_score(*clusters, points),
                               rtol=1e-3)


def test_mahalanobis_scaling_beats_euclidean_distance(fitted: OodModel) -> None:
    along_wide_axis = MEANS[0] + [15.0, 0.0, 0.0, 0.0]  # 1.5 standard deviations
    along_narrow_axis = MEANS[0] + [0.0, 0.0, 5.0, 0.0]  # 5 standard deviations
    assert np.linalg.norm(along_wide_axis) > np.linalg.norm(along_narrow_axis)
    wide, narrow = fitted.score(np.stack([along_wide_axis, along_narrow_axis]))
    assert wide < narrow
    assert wide < 2.0 < 3.0 < narrow


def test_score_uses_the_nearest_class(fitted: OodModel) -> None:
    scores = fitted.score(np.stack([MEANS[0] + [0, 0, 0, 3.0], MEANS[1] - [0, 0, 0, 3.0]]))
    # Both are 3 narrow standard deviations from their own mean, far from the other.
    np.testing.assert_allclose(scores[0], scores[1], rtol=0.1)
    assert 1.5 < scores[0] < 3.0  # 3 / sqrt(1 + ridge)


def test_training_points_mostly_score_below_far_points(
        clusters: tuple[NDArray[np.float64], NDArray[np.int64]], fitted: OodModel) -> None:
    train = fitted.score(clusters[0])
    assert np.quantile(train, 0.99) < fitted.score(MEANS + np.array([0.0, 0.0, 8.0, 0.0])).min()


def test_fit_keeps_the_requested_components() -> None:
    rng = np.random.default_rng(2)
    labels = np.repeat([3, 7], 50)  # arbitrary class indices
    features = rng.normal(size=(100, 6)) * [5, 4, 0.1, 0.1, 0.1, 0.1]
    model = OodModel.fit(features, labels, components=2)
    assert model.components.shape == (2, 6)
    assert model.class_means.shape == (2, 2)
    assert model.precision.shape == (2, 2)
    assert model.score(features[:5]).shape == (5,)
    # The principal axes are the two high-variance ones.
    np.testing.assert_allclose((model.components[:, :2] ** 2).sum(axis=1), 1.0, atol=1e-3)


def test_fit_caps_components_at_n_minus_one() -> None:
    model = OodModel.fit(np.arange(12, dtype=float).reshape(3, 4) ** 2, np.array([0, 0, 1]))
    assert model.components.shape == (2, 4)


@pytest.mark.parametrize(
    ("features", "classes"),
    [(np.zeros((2, 3)), np.zeros(2)),  # N < 3
     (np.zeros((5, 3)), np.zeros(4)),  # N mismatch
     (np.zeros(5), np.zeros(5))],  # not 2-D
)
def test_fit_validates_its_inputs(features: NDArray[np.float64],
                                  classes: NDArray[np.int64]) -> None:
    with pytest.raises(ValueError, match="features must be N x D"):
        OodModel.fit(features, classes)


def test_constructor_checks_shapes(fitted: OodModel) -> None:
    arrays = {"mean": fitted.mean, "components": fitted.components,
              "class_means": fitted.class_means, "precision": fitted.precision}
    for key, bad, match in [("components", fitted.components[:, :3], "components must be"),
                            ("class_means", fitted.class_means[:, :3], "class_means must be"),
                            ("class_means", fitted.class_means[0], "class_means must be"),
                            ("precision", fitted.precision[:3], "precision must be")]:
        with pytest.raises(ValueError, match=match):
            OodModel(**(arrays | {key: bad}))


# --- save / load -----------------------------------------------------------------------------


def test_save_load_round_trip(tmp_path: Path, fitted: OodModel) -> None:
    path = tmp_path / "ood.npz"
    fitted.save(path)
    loaded = OodModel.load(path)
    for key in ("mean", "components", "class_means", "precision"):
        np.testing.assert_array_equal(getattr(loaded, key), getattr(fitted, key))
        assert getattr(loaded, key).dtype == np.float32
    points = np.random.default_rng(3).normal(size=(10, 4)) * 10
    np.testing.assert_array_equal(loaded.score(points), fitted.score(points))
    with np.load(path, allow_pickle=False) as data:
        assert sorted(data.files) == ["class_means", "components", "mean", "precision"]


def test_load_refuses_pickled_object_arrays(tmp_path: Path, fitted: OodModel) -> None:
    path = tmp_path / "ood.npz"
    np.savez(path, mean=np.array([{"evil": 1}, None], dtype=object),
             components=fitted.components, class_means=fitted.class_means,
             precision=fitted.precision)
    with pytest.raises(ValueError, match=r"ood\.npz: not valid OOD statistics"):
        OodModel.load(path)


def test_load_refuses_missing_arrays(tmp_path: Path, fitted: OodModel) -> None:
    path = tmp_path / "ood.npz"
    np.savez(path, mean=fitted.mean, components=fitted.components)
    with pytest.raises(ValueError, match=r"ood\.npz: not valid OOD statistics"):
        OodModel.load(path)


@pytest.mark.parametrize("content", [b"", b"not an npz file at all", b"PK\x03\x04truncated"])
def test_load_refuses_garbage(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "ood.npz"
    path.write_bytes(content)
    with pytest.raises(ValueError, match=r"ood\.npz"):
        OodModel.load(path)


def test_load_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"absent\.npz"):
        OodModel.load(tmp_path / "absent.npz")


def test_load_checks_shapes(tmp_path: Path, fitted: OodModel) -> None:
    path = tmp_path / "ood.npz"
    np.savez(path, mean=fitted.mean, components=fitted.components,
             class_means=fitted.class_means, precision=fitted.precision[:2])
    with pytest.raises(ValueError, match="precision"):
        OodModel.load(path)


# --- decide ----------------------------------------------------------------------------------

#: Score = Euclidean norm of the 2-D features (identity statistics, one class mean at 0).
EUCLIDEAN = OodModel(mean=np.zeros(2, np.float32), components=np.eye(2, dtype=np.float32),
                     class_means=np.zeros((1, 2), np.float32),
                     precision=np.eye(2, dtype=np.float32))
ABSTENTION = Abstention(min_probability=0.5, ood_threshold=5.0, rule="unit")


def output(rows: list[tuple[int, float, float, float]]) -> EngineOutput:
    """One image per (routed class, its stage-1 probability, abnormal probability, OOD
    feature); the other classes share the rest of the stage-1 probability."""
    n = len(rows)
    probs = np.zeros((n, 3), np.float32)
    for i, (k, p, _, _) in enumerate(rows):
        probs[i] = (1.0 - p) / 2
        probs[i, k] = p
    return EngineOutput(
        body_part_probabilities=probs,
        body_part_index=np.array([r[0] for r in rows], np.int64),
        features=np.array([[r[3], 0.0] for r in rows], np.float32),
        abnormal_probability=np.array([r[2] for r in rows], np.float32),
        maps=np.zeros((n, 0, 0), np.float32),
        scores={"pooled": np.array([r[2] for r in rows], np.float32)},
    )


def test_decide_gives_each_reason_and_assesses_the_rest() -> None:
    out = output([
        (0, 0.9, 0.7, 1.0),  # assessed
        (2, 0.9, np.nan, 1.0),  # OTHER: out of scope
        (1, 0.4, 0.2, 1.0),  # low confidence
        (1, 0.8, 0.2, 6.0),  # out of distribution
    ])
    p = decide(out, TAXONOMY, ABSTENTION, EUCLIDEAN)
    assert len(p) == 4
    assert [x.body_part for x in p] == ["ELBOW", "OTHER", "WRIST", "WRIST"]
    assert [x.assessed for x in p] == [True, False, False, False]
    assert p[0].abnormal_probability == pytest.approx(0.7)
    assert p[0].body_part_probability == pytest.approx(0.9)
    assert p[0].reason == ""
    assert p[1].reason == "body part OTHER is outside the assessed scope"
    assert "body-part confidence 0.40 is below the model's minimum 0.50" in p[2].reason
    assert "out-of-distribution score 6.0 > 5.0" in p[3].reason
    assert all(x.abnormal_probability is None for x in p[1:])
    assert [x.ood_score for x in p] == pytest.approx([1.0, 1.0, 1.0, 6.0])


def test_decide_reason_precedence() -> None:
    out = output([
        (2, 0.1, np.nan, 9.0),  # out of scope wins over low confidence and OOD
        (0, 0.1, 0.5, 9.0),  # low confidence wins over OOD
    ])
    p = decide(out, TAXONOMY, ABSTENTION, EUCLIDEAN)
    assert p[0].reason == "body part OTHER is outside the assessed scope"
    assert "below the model's minimum" in p[1].reason


def test_decide_boundaries_are_inclusive_for_assessment() -> None:
    # confidence == min_probability and score == ood_threshold: still assessed.
    p = decide(output([(0, 0.5, 0.3, 5.0)]), TAXONOMY, ABSTENTION, EUCLIDEAN)
    assert p[0].assessed
    assert p[0].ood_score == 5.0


def test_decide_clamps_probabilities() -> None:
    out = output([(0, 1.0, 1.0, 0.0), (1, 1.0, 0.0, 0.0)])
    out.body_part_probabilities[0, 0] = np.nextafter(np.float32(1), np.float32(2))
    out.abnormal_probability[0] = np.nextafter(np.float32(1), np.float32(2))
    out.abnormal_probability[1] = -1e-7
    p = decide(out, TAXONOMY, ABSTENTION, EUCLIDEAN)
    assert out.abnormal_probability[0] > 1.0  # the engine's rounding, clamped below
    assert (p[0].body_part_probability, p[0].abnormal_probability) == (1.0, 1.0)
    assert p[1].abnormal_probability == 0.0
    assert all(x.assessed for x in p)


def test_decide_without_ood_model_never_abstains_for_ood() -> None:
    p = decide(output([(0, 0.9, 0.6, 1000.0)]), TAXONOMY, ABSTENTION, None)
    assert p[0].assessed
    assert p[0].ood_score is None


def test_decide_without_ood_threshold_reports_the_score_only() -> None:
    abstention = Abstention(min_probability=0.0, ood_threshold=None)
    p = decide(output([(1, 0.2, 0.6, 1000.0)]), TAXONOMY, abstention, EUCLIDEAN)
    assert p[0].assessed
    assert p[0].ood_score == pytest.approx(1000.0)


def test_decide_uses_the_routed_class_probability() -> None:
    out = output([(1, 0.6, 0.4, 0.0)])
    out.body_part_probabilities[0] = [0.7, 0.2, 0.1]  # routed to WRIST whatever argmax says
    p = decide(out, TAXONOMY, ABSTENTION, EUCLIDEAN)
    assert p[0].body_part == "WRIST"
    assert p[0].body_part_probability == pytest.approx(0.2)
    assert not p[0].assessed
    assert "0.20" in p[0].reason
