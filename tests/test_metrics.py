"""Metrics: token ids and positions are validated, never coerced (5.9 is not token 5, -1 is not the last id)."""

from __future__ import annotations

import pytest
import torch

import rope_interp as ri
from rope_interp.errors import LayerError, ParameterError, TokenError
from rope_interp.model.testing import tiny_model
from rope_interp.sweep.spec import SweepSpec

TOKENS = [[1, 5, 6, 7, 8]]


@pytest.mark.parametrize("bad", [5.9, True, -1, "5", torch.tensor([1.0]), torch.tensor([-2])])
def test_logit_diff_refuses_what_is_not_a_token_id(bad):
    with pytest.raises(TokenError):
        ri.logit_diff(bad, 7)
    with pytest.raises(TokenError):
        ri.logit_diff(7, bad)


def test_logit_diff_refuses_answer_equal_to_wrong():
    # regression (issue 22 #14): answer == wrong gave an all-zero patch table without a word
    with pytest.raises(ParameterError, match="identically zero"):
        ri.logit_diff(7, 7)
    with pytest.raises(ParameterError, match="identically zero"):
        ri.logit_diff(torch.tensor([3, 4]), torch.tensor([3, 4]))
    ri.logit_diff(torch.tensor([3, 4]), torch.tensor([3, 5]))  # rows that differ somewhere are fine


def test_logit_diff_values_and_the_vocabulary_check():
    logits = torch.arange(12.0).reshape(1, 1, 12)
    assert ri.logit_diff(5, 2)(logits).item() == 3.0
    assert ri.logit_diff(torch.tensor([5]), torch.tensor(2))(logits).item() == 3.0
    with pytest.raises(TokenError, match="outside the vocabulary"):
        ri.logit_diff(12, 2)(logits)
    with pytest.raises(LayerError):
        ri.logit_diff(5, 2, pos=2.7)


@pytest.mark.parametrize(
    "metric",
    [
        {"name": "logit_diff", "answer": 5.9, "wrong": 7},
        {"name": "logit_diff", "answer": True, "wrong": 7},
        {"name": "logit_diff", "answer": -1, "wrong": 7},
        {"name": "logit_diff", "answer": 5, "wrong": 10_000},
    ],
)
def test_spec_metric_token_fields_are_not_coerced(metric):
    spec = SweepSpec(tokens=TOKENS, metric=metric, layers=[0], bands=[0])
    with pytest.raises(TokenError):
        spec.run(tiny_model(), progress=False)


@pytest.mark.parametrize("pos", [2.7, True, 5, -6])
def test_spec_metric_position_is_checked(pos):
    spec = SweepSpec(tokens=TOKENS, metric={"name": "logit_diff", "answer": 5, "wrong": 7, "pos": pos})
    with pytest.raises(LayerError):
        spec.run(tiny_model(), progress=False)


def test_a_valid_logit_diff_spec_still_runs():
    model = tiny_model()
    spec = SweepSpec(
        tokens=TOKENS, metric={"name": "logit_diff", "answer": 5, "wrong": 7, "pos": -1}, layers=[0]
    )
    r = spec.run(model, progress=False)
    direct = ri.exact_sweep(model, torch.tensor(TOKENS), ri.logit_diff(5, 7), layers=[0], progress=False)
    torch.testing.assert_close(r.values, direct.values)
