import pytest

from search.evaluation import average_precision_at_k, precision_at_k


def test_precision_at_k():
    assert precision_at_k([True, False, True, True], 1) == 1.0
    assert precision_at_k([True, False, True, True], 4) == 0.75
    assert precision_at_k([False, False], 2) == 0.0


def test_average_precision_matches_the_formula():
    # rel = 1,0,1 with R = 2: (1/1 + 2/3) / min(3, 2)
    assert average_precision_at_k([True, False, True], 3, 2) == pytest.approx((1 + 2 / 3) / 2)
    # R larger than k: the normaliser is k
    assert average_precision_at_k([False, True], 2, 10) == pytest.approx((1 / 2) / 2)
    assert average_precision_at_k([True, True], 2, 0) == 0.0
