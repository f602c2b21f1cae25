"""Tests of the numpy two-stage routing engine (models.serving.engine) with a fake backend."""

from __future__ import annotations

import math

import numpy as np
import pytest
from numpy.typing import NDArray

from models.serving.engine import EngineOutput, TwoStageEngine, image_scores, softmax
from models.serving.taxonomy import Taxonomy

TAXONOMY = Taxonomy.from_names(["ELBOW", "WRIST", "OTHER"])
H, W = 2, 4
#: CAM gain of each stage-2 network (so that a CAM tells which network made it).
CAM_GAIN = {"ELBOW": 1.0, "WRIST": 100.0}
#: Position-dependent part of every CAM: 10 * column + row.
RAMP = (10.0 * np.arange(W)[None, :] + np.arange(H)[:, None]).astype(np.float32)


def _halves(x: NDArray[np.float32]) -> tuple[NDArray[np.float32], ...]:
    """Left-half mean, right-half mean, top-row minus bottom-row mean (mirror-invariant)."""
    left = x[:, 0, :, : W // 2].mean(axis=(1, 2))
    right = x[:, 0, :, W // 2 :].mean(axis=(1, 2))
    vertical = x[:, 0, 0, :].mean(axis=1) - x[:, 0, 1, :].mean(axis=1)
    return left, right, vertical


def stage1_logits(x: NDArray[np.float32]) -> NDArray[np.float32]:
    left, right, vertical = _halves(x)
    return np.stack([3 * left, 5 * right - 1, 6 * vertical], axis=1).astype(np.float32)


def stage2_z(name: str, x: NDArray[np.float32]) -> NDArray[np.float32]:
    """Stage-2 abnormal-minus-normal logit; not mirror-symmetric."""
    left, right, _ = _halves(x)
    z = 2 * left - right if name == "ELBOW" else left - 3 * right + 1
    return z.astype(np.float32)


class FakeRunner:
    """A numpy NetworkRunner that records every call (network name and a copy of its batch)."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, NDArray[np.float32]]] = []

    def body_part(self, x: NDArray[np.float32]) -> tuple[NDArray[np.float32], NDArray[np.float32]]:
        self.calls.append(("body_part", x.copy()))
        features = np.stack(_halves(x), axis=1).astype(np.float32)
        return stage1_logits(x), features

    def abnormal(self, name: str,
                 x: NDArray[np.float32]) -> tuple[NDArray[np.float32], NDArray[np.float32]]:
        self.calls.append((name, x.copy()))
        if name not in TAXONOMY.assessed:
            raise AssertionError(f"network of unassessed class {name} called")
        z = stage2_z(name, x)
        logits = np.stack([np.zeros_like(z), z], axis=1)
        cam = (CAM_GAIN[name] * x[:, 0] + RAMP).astype(np.float32)
        return logits, cam

    def names(self) -> list[str]:
        return [name for name, _ in self.calls]

    def batches(self, name: str) -> list[NDArray[np.float32]]:
        return [x for n, x in self.calls if n == name]


def image(left: float, right: float, *, top: float | None = None,
          bottom: float | None = None) -> NDArray[np.float32]:
    """One 1 x H x W image: halves of the given values, or rows of the given values."""
    x = np.empty((1, H, W), dtype=np.float32)
    x[0, :, : W // 2] = left
    x[0, :, W // 2 :] = right
    if top is not None:
        x[0, 0, :] = top
    if bottom is not None:
        x[0, 1, :] = bottom
    return x


ELBOW_IMAGE = image(1.0, 0.0)  # logits [3, -1, 0]; mirrored [0, 4, 0]
WRIST_IMAGE = image(0.0, 1.0)  # logits [0, 4, 0]
OTHER_IMAGE = image(0.0, 0.0, top=1.0, bottom=0.0)  # logits [1.5, 1.5, 6]; mirror-invariant


def batch(*images: NDArray[np.float32]) -> NDArray[np.float32]:
    return np.stack(images).astype(np.float32)


def mixed(n: int = 7, seed: int = 0) -> NDArray[np.float32]:
    """``n`` images cycling through the three classes, with noise."""
    rng = np.random.default_rng(seed)
    kinds = [ELBOW_IMAGE, WRIST_IMAGE, OTHER_IMAGE]
    x = batch(*(kinds[i % 3] for i in range(n)))
    return (x + rng.uniform(-0.05, 0.05, x.shape)).astype(np.float32)


def sigmoid(z: float) -> float:
    return 1.0 / (1.0 + math.exp(-z))


def softmax_list(logits: list[float]) -> list[float]:
    exp = [math.exp(v) for v in logits]
    return [e / sum(exp) for e in exp]


def run(images: NDArray[np.float32], *, flip_tta: bool = False, batch_size: int = 32,
        **kwargs: object) -> tuple[EngineOutput, FakeRunner]:
    runner = FakeRunner()
    engine = TwoStageEngine(runner, TAXONOMY, flip_tta=flip_tta, batch_size=batch_size)
    return engine.predict(images, **kwargs), runner  # type: ignore[arg-type]


# --- softmax ---------------------------------------------------------------------------------


def test_softmax_rows_and_stability() -> None:
    out = softmax(np.array([[0.0, 0.0], [1000.0, 0.0], [1.0, 2.0]]))
    assert out.dtype == np.float32
    np.testing.assert_allclose(out.sum(axis=1), 1.0, rtol=1e-6)
    np.testing.assert_allclose(out[0], [0.5, 0.5])
    np.testing.assert_allclose(out[1], [1.0, 0.0])
    np.testing.assert_allclose(out[2], softmax_list([1.0, 2.0]), rtol=1e-6)


# --- routing ---------------------------------------------------------------------------------


def test_routing_sends_each_image_to_its_class_network() -> None:
    images = batch(ELBOW_IMAGE, WRIST_IMAGE, OTHER_IMAGE, WRIST_IMAGE, ELBOW_IMAGE, OTHER_IMAGE)
    out, runner = run(images, maps=True)

    np.testing.assert_array_equal(out.body_part_index, [0, 1, 2, 1, 0, 2])
    assert out.body_part_index.dtype == np.int64
    assert runner.names() == ["body_part", "ELBOW", "WRIST"]
    np.testing.assert_array_equal(runner.batches("ELBOW")[0], images[[0, 4]])
    np.testing.assert_array_equal(runner.batches("WRIST")[0], images[[1, 3]])

    expected_p = [sigmoid(2.0), sigmoid(-2.0), math.nan, sigmoid(-2.0), sigmoid(2.0), math.nan]
    np.testing.assert_allclose(out.abnormal_probability, expected_p, rtol=1e-6)
    assert out.abnormal_probability.dtype == np.float32
    np.testing.assert_allclose(out.maps[0], images[0, 0] + RAMP)
    np.testing.assert_allclose(out.maps[1], 100 * images[1, 0] + RAMP)
    assert np.isnan(out.maps[[2, 5]]).all()
    np.testing.assert_allclose(out.body_part_probabilities[0], softmax_list([3, -1, 0]),
                               rtol=1e-6)
    np.testing.assert_allclose(out.features[2], [0.5, 0.5, 1.0])


def test_no_network_is_called_for_a_class_without_images() -> None:
    out, runner = run(batch(ELBOW_IMAGE, ELBOW_IMAGE))
    assert runner.names() == ["body_part", "ELBOW"]
    assert np.isfinite(out.abnormal_probability).all()


def test_unassessed_class_images_get_nan_and_no_network_call() -> None:
    out, runner = run(batch(OTHER_IMAGE, OTHER_IMAGE, OTHER_IMAGE), maps=True)
    assert runner.names() == ["body_part"]
    np.testing.assert_array_equal(out.body_part_index, [2, 2, 2])
    assert np.isnan(out.abnormal_probability).all()
    assert out.maps.shape[0] == 3


def test_route_overrides_stage1_routing() -> None:
    images = batch(ELBOW_IMAGE, WRIST_IMAGE, OTHER_IMAGE)
    routed, runner = run(images, route=[1, 2, 0], maps=True)
    plain, _ = run(images)

    np.testing.assert_array_equal(routed.body_part_index, [1, 2, 0])
    # Stage 1 still runs and reports its own probabilities.
    np.testing.assert_array_equal(routed.body_part_probabilities, plain.body_part_probabilities)
    assert runner.names() == ["body_part", "ELBOW", "WRIST"]
    np.testing.assert_array_equal(runner.batches("ELBOW")[0], images[[2]])
    np.testing.assert_array_equal(runner.batches("WRIST")[0], images[[0]])
    # ELBOW_IMAGE through WRIST's network: z = 1 - 0 + 1; OTHER_IMAGE through ELBOW's: 2*.5-.5.
    np.testing.assert_allclose(routed.abnormal_probability[[0, 2]],
                               [sigmoid(2.0), sigmoid(0.5)], rtol=1e-6)
    assert math.isnan(routed.abnormal_probability[1])  # WRIST_IMAGE forced to OTHER
    np.testing.assert_allclose(routed.maps[0], 100 * images[0, 0] + RAMP)
    assert np.isnan(routed.maps[1]).all()


def test_route_must_have_one_entry_per_image() -> None:
    with pytest.raises(ValueError, match=r"one class index per image \(2\), got 3"):
        run(batch(ELBOW_IMAGE, WRIST_IMAGE), route=[0, 1, 1])


# --- flip TTA --------------------------------------------------------------------------------


def test_flip_tta_feeds_original_then_mirrored_views() -> None:
    images = mixed(4)
    _, runner = run(images, flip_tta=True)
    (stage1,) = runner.batches("body_part")
    np.testing.assert_array_equal(stage1, np.concatenate([images, images[..., ::-1]]))


def test_flip_tta_averages_both_views_by_hand() -> None:
    out, _ = run(batch(ELBOW_IMAGE), flip_tta=True, route=[0], maps=True)
    original, mirrored = softmax_list([3, -1, 0]), softmax_list([0, 4, 0])
    expected = [(a + b) / 2 for a, b in zip(original, mirrored, strict=True)]
    np.testing.assert_allclose(out.body_part_probabilities[0], expected, rtol=1e-6)
    np.testing.assert_allclose(out.features[0], [0.5, 0.5, 0.0])
    # ELBOW network: z = 2L - R is 2 on the original and -1 on the mirror image.
    np.testing.assert_allclose(out.abnormal_probability[0], (sigmoid(2) + sigmoid(-1)) / 2,
                               rtol=1e-6)


def test_mirroring_changes_the_routing_under_flip_tta() -> None:
    # ELBOW_IMAGE alone says ELBOW; its mirror image says WRIST more strongly.
    plain, _ = run(batch(ELBOW_IMAGE))
    tta, runner = run(batch(ELBOW_IMAGE), flip_tta=True)
    assert plain.body_part_index[0] == 0
    assert tta.body_part_index[0] == 1
    assert runner.names() == ["body_part", "WRIST"]


def test_flip_tta_unmirrors_the_map_before_averaging() -> None:
    rng = np.random.default_rng(1)
    images = (batch(ELBOW_IMAGE, WRIST_IMAGE) + rng.uniform(0, 0.1, (2, 1, H, W))
              ).astype(np.float32)
    out, _ = run(images, flip_tta=True, route=[0, 1], maps=True)
    # Each view's CAM is gain * view + RAMP; un-mirroring the second makes its ramp
    # 10 * (W - 1 - column) + row, so the average is gain * image + 10 * (W - 1) / 2 + row.
    rows = np.arange(H, dtype=np.float32)[:, None]
    np.testing.assert_allclose(out.maps[0], images[0, 0] + 15.0 + rows, rtol=1e-6)
    np.testing.assert_allclose(out.maps[1], 100 * images[1, 0] + 15.0 + rows, rtol=1e-6)


# --- batching --------------------------------------------------------------------------------


@pytest.mark.parametrize("flip_tta", [False, True])
def test_results_do_not_depend_on_batch_size(flip_tta: bool) -> None:
    images = mixed(7)
    outputs = {}
    for size in (1, 3, 64):
        out, runner = run(images, flip_tta=flip_tta, batch_size=size, maps=True)
        limit = size * (2 if flip_tta else 1)
        assert all(len(x) <= limit for _, x in runner.calls)
        outputs[size] = out
    # Without TTA all three classes occur; with it, the ELBOW images' mirrors say WRIST.
    assert set(outputs[64].body_part_index.tolist()) == ({1, 2} if flip_tta else {0, 1, 2})
    for size in (1, 3):
        for field in ("body_part_probabilities", "body_part_index", "features",
                      "abnormal_probability", "maps"):
            np.testing.assert_allclose(getattr(outputs[size], field),
                                       getattr(outputs[64], field), rtol=1e-6,
                                       err_msg=f"{field} with batch_size={size}")


def test_batch_size_splits_the_calls() -> None:
    images = batch(*[ELBOW_IMAGE] * 5, OTHER_IMAGE)
    _, runner = run(images, batch_size=2)
    assert [(n, len(x)) for n, x in runner.calls] == [
        ("body_part", 2), ("body_part", 2), ("body_part", 2),
        ("ELBOW", 2), ("ELBOW", 2), ("ELBOW", 1),
    ]


def test_batch_size_must_be_positive() -> None:
    with pytest.raises(ValueError, match="batch_size must be >= 1, got 0"):
        TwoStageEngine(FakeRunner(), TAXONOMY, flip_tta=False, batch_size=0)


# --- output shapes ---------------------------------------------------------------------------


def test_without_maps_returns_an_empty_n_by_0_by_0_array() -> None:
    out, runner = run(mixed(5), maps=False)
    assert out.maps.shape == (5, 0, 0)
    assert out.maps.dtype == np.float32
    assert "ELBOW" in runner.names()  # stage 2 still ran
    assert np.isfinite(out.abnormal_probability[out.body_part_index != 2]).all()


def test_output_shapes() -> None:
    out, _ = run(mixed(5), maps=True, flip_tta=True)
    assert out.body_part_probabilities.shape == (5, 3)
    assert out.body_part_index.shape == (5,)
    assert out.features.shape == (5, 3)
    assert out.abnormal_probability.shape == (5,)
    assert out.maps.shape == (5, H, W)
    np.testing.assert_allclose(out.body_part_probabilities.sum(axis=1), 1.0, rtol=1e-6)


def test_empty_input_raises() -> None:
    with pytest.raises(ValueError, match="at least one image"):
        run(np.zeros((0, 1, H, W), dtype=np.float32))


def test_stages_alone_compose_to_predict_and_run_each_network_once() -> None:
    images = mixed(9)
    runner = FakeRunner()
    engine = TwoStageEngine(runner, TAXONOMY, flip_tta=True, batch_size=4)
    whole = engine.predict(images, maps=True)
    predict_calls = runner.names()

    runner.calls.clear()
    probabilities, features = engine.body_parts(images)
    np.testing.assert_array_equal(probabilities, whole.body_part_probabilities)
    np.testing.assert_array_equal(features, whole.features)
    stage1_calls = runner.names()
    assert set(stage1_calls) == {"body_part"}

    runner.calls.clear()
    scores, maps = engine.abnormal(images, whole.body_part_index, maps=True)
    np.testing.assert_array_equal(scores["pooled"], whole.abnormal_probability)
    np.testing.assert_array_equal(maps, whole.maps)
    assert "body_part" not in runner.names()
    assert sorted(stage1_calls + runner.names()) == sorted(predict_calls)
    with pytest.raises(ValueError, match=r"class indices in \[0, 3\)"):
        engine.abnormal(images[:1], [7])


def test_image_scores_pooled_map_and_blend() -> None:
    pooled = np.array([0.2, 0.9], np.float32)
    maps = np.zeros((2, 3, 3), np.float32)
    maps[0, 0, :3] = [0.9, 0.8, 0.7]
    maps[0, 2, 2] = 0.6
    maps[1] = 0.1
    scores = image_scores(pooled, maps, top_k=4)
    np.testing.assert_allclose(scores["pooled"], pooled)
    np.testing.assert_allclose(scores["map"], [(0.9 + 0.8 + 0.7 + 0.6) / 4, 0.1], rtol=1e-6)
    np.testing.assert_allclose(scores["blend"], (pooled + scores["map"]) / 2, rtol=1e-6)
    # top_k larger than the map: the mean of every cell
    np.testing.assert_allclose(image_scores(pooled, maps, top_k=100)["map"],
                               maps.reshape(2, -1).mean(axis=1), rtol=1e-6)


@pytest.mark.parametrize("rule", ["pooled", "map", "blend"])
def test_engine_reports_the_chosen_image_score(rule: str) -> None:
    images = mixed(6)
    engine = TwoStageEngine(FakeRunner(), TAXONOMY, flip_tta=True, image_score=rule, top_k=2)
    out = engine.predict(images)
    assert set(out.scores) == {"pooled", "map", "blend"}
    np.testing.assert_array_equal(out.abnormal_probability, out.scores[rule])
    assessed = ~np.isnan(out.scores["pooled"])
    assert assessed.any() and (~assessed).any()  # OTHER images have no score of any kind
    for values in out.scores.values():
        np.testing.assert_array_equal(np.isnan(values), ~assessed)


def test_engine_refuses_an_unknown_image_score() -> None:
    with pytest.raises(ValueError, match="image_score"):
        TwoStageEngine(FakeRunner(), TAXONOMY, flip_tta=False, image_score="max")
