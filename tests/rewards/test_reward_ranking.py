"""VisualQuality-R1 fidelity reward against a loop transcription of method.md section 6."""

import math
import statistics

import numpy as np
import pytest

from jaxbiqa.rewards.ranking import fidelity, ranking_reward


def ans(x: float) -> str:
    return f'<think>t</think><answer>{{"rating": {x:.6f}}}</answer>'


def phi(x: float) -> float:
    return 0.5 * (1.0 + math.erf(x / math.sqrt(2.0)))


def loop_reference(scores: list[list[float]], mos: list[float]) -> list[list[float]]:
    """The formula as written: mean/unbiased variance per image, mean over every other image z."""
    mu = [statistics.fmean(s) for s in scores]
    var = [statistics.variance(s) if len(s) > 1 else 0.0 for s in scores]
    out = []
    for i, samples in enumerate(scores):
        row = []
        for s in samples:
            terms = []
            for z in range(len(scores)):
                if z == i:
                    continue
                p = phi((s - mu[z]) / math.sqrt(var[i] + var[z] + 1e-6))
                g = 1.0 if mos[i] > mos[z] else 0.0 if mos[i] < mos[z] else 0.5
                terms.append(math.sqrt(p * g + 1e-6) + math.sqrt((1 - p) * (1 - g) + 1e-6))
            row.append(statistics.fmean(terms))
        out.append(row)
    return out


@pytest.mark.parametrize("seed", range(5))
def test_matches_loop_transcription(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n_images, g = int(rng.integers(2, 7)), int(rng.integers(2, 7))
    mos = rng.uniform(1, 5, n_images).round(1)
    mos[-1] = mos[0]  # include a tie (g = 0.5)
    scores = rng.uniform(1, 5, (n_images, g)).round(2)
    order = rng.permutation(n_images * g)  # samples of one image need not be contiguous
    groups = np.repeat(np.arange(n_images), g)[order]
    flat = scores.reshape(-1)[order]
    batch = {"mos_norm": mos[groups], "group": groups}
    got = ranking_reward()([ans(x) for x in flat], batch)
    want = np.array(loop_reference(scores.tolist(), mos.tolist())).reshape(-1)[order]
    assert got.dtype == np.float32 and got.shape == (n_images * g,)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_hand_computed_extremes() -> None:
    right = fidelity(np.array([4.0, 4.0, 2.0, 2.0]), np.array([0, 0, 1, 1]), np.array([4.0, 4.0, 2.0, 2.0]))
    np.testing.assert_allclose(right, np.full(4, math.sqrt(1 + 1e-6) + 1e-3), rtol=1e-6)
    wrong = fidelity(np.array([2.0, 2.0, 4.0, 4.0]), np.array([0, 0, 1, 1]), np.array([4.0, 4.0, 2.0, 2.0]))
    np.testing.assert_allclose(wrong, np.full(4, 2e-3), rtol=1e-6)


def test_unparsable_samples_get_zero_and_leave_the_statistics() -> None:
    rng = np.random.default_rng(7)
    scores = rng.uniform(1, 5, (3, 4)).round(2)
    mos = [2.0, 3.5, 4.5]
    texts = [ans(x) for x in scores.reshape(-1)]
    texts[1] = "no rating"
    texts[6] = '<answer>{"rating": 9}</answer>'
    groups = np.repeat(np.arange(3), 4)
    got = ranking_reward()(texts, {"mos_norm": np.repeat(mos, 4), "group": groups})
    kept = [[s for j, s in enumerate(row) if 4 * i + j not in (1, 6)] for i, row in enumerate(scores.tolist())]
    want = loop_reference(kept, mos)
    assert got[1] == 0.0 and got[6] == 0.0
    np.testing.assert_allclose(np.delete(got, [1, 6]), np.concatenate(want), rtol=1e-5)


def test_single_image_and_empty_groups() -> None:
    one = ranking_reward()([ans(3.0), ans(4.0)], {"mos_norm": [3.0, 3.0], "group": ["img", "img"]})
    np.testing.assert_array_equal(one, [0.0, 0.0])
    # image 1 has no parsable sample: it is no comparator, so image 0 has none either
    lonely = ranking_reward()([ans(3.0), ans(4.0), "x", "y"], {"mos_norm": [3.0, 3.0, 2.0, 2.0], "group": [0, 0, 1, 1]})
    np.testing.assert_array_equal(lonely, np.zeros(4))
    empty = ranking_reward()([], {"mos_norm": [], "group": []})
    assert empty.shape == (0,) and empty.dtype == np.float32


def test_single_sample_group_has_zero_variance() -> None:
    got = fidelity(np.array([3.0, 2.0, 4.0]), np.array([0, 1, 1]), np.array([3.0, 2.0, 2.0]))
    want = loop_reference([[3.0], [2.0, 4.0]], [3.0, 2.0])
    np.testing.assert_allclose(got, np.concatenate(want), rtol=1e-5)


def test_errors() -> None:
    with pytest.raises(ValueError, match="differs between samples of one group"):
        ranking_reward()([ans(3), ans(3)], {"mos_norm": [3.0, 4.0], "group": [0, 0]})
    with pytest.raises(KeyError, match="group"):
        ranking_reward()([ans(3)], {"mos_norm": [3.0]})
    with pytest.raises(ValueError, match="NaN"):
        ranking_reward()([ans(3), ans(3)], {"mos_norm": [3.0, None], "group": [0, 1]})
    with pytest.raises(ValueError, match="one length"):
        fidelity(np.zeros(3), np.zeros(3), np.zeros(2))
    with pytest.raises(ValueError, match="eps_var"):
        ranking_reward(eps_var=0.0)
