"""medseg.metrics on shapes whose answers are known."""
import math

import numpy as np
import pytest

from medseg import metrics


def ball(shape, centre, radius, spacing=(1.0, 1.0, 1.0)):
    z, y, x = np.indices(shape)
    sx, sy, sz = spacing
    return ((x - centre[0]) * sx) ** 2 + ((y - centre[1]) * sy) ** 2 + ((z - centre[2]) * sz) ** 2 <= radius ** 2


def test_identical_masks_score_perfectly():
    a = ball((40, 40, 40), (20, 20, 20), 8)
    m = metrics.compare(a, a, (1.0, 1.0, 1.0))
    assert m == {"dice": 1.0, "hd95_mm": 0.0, "volume_error": 0.0, "pieces": 1, "true_pieces": 1}


def test_a_shifted_ball_has_its_shift_as_hd95_in_mm():
    spacing = (0.5, 0.5, 2.0)
    truth = ball((40, 80, 80), (40, 40, 20), 12, spacing)
    shifted = np.roll(truth, 2, axis=0)  # 2 slices of 2 mm
    assert metrics.hd95_mm(shifted, truth, spacing) == pytest.approx(4.0, abs=0.6)
    assert metrics.volume_error(shifted, truth) == 0.0
    assert 0.7 < metrics.dice(shifted, truth) < 0.95


def test_volume_error_pieces_and_empty_masks():
    truth = ball((30, 30, 30), (15, 15, 15), 6)
    assert metrics.volume_error(np.zeros_like(truth), truth) == -1.0
    two = truth.copy()
    two[0, 0, 0] = True  # a speck far away: its own piece (26-connectivity)
    assert metrics.pieces(two) == 2
    empty = np.zeros_like(truth)
    assert metrics.hd95_mm(empty, empty, (1, 1, 1)) == 0.0
    assert math.isinf(metrics.hd95_mm(empty, truth, (1, 1, 1)))
    assert metrics.dice(empty, empty) == 1.0
