"""Shared fixtures. Builders of tiny models live in ``rope_interp.model.testing`` (never import from tests)."""

from __future__ import annotations

import pytest
import torch

from rope_interp.model.testing import LAYOUTS, tiny_layout_model

# HookedTransformer-only tests skip on TransformerLens 4: ../conftest.py (it covers the doctests too).


def pytest_collection_modifyitems(config, items):
    """Skip ``gpu``-marked tests where there is no CUDA device (they compare CPU with CUDA)."""
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(
        reason="no CUDA device (torch.cuda.is_available() is False); see scripts/gpu_check.sh"
    )
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(params=sorted(LAYOUTS))
def layout_model(request):
    """A tiny random rotary model, once per layout family (NeoX, GPT-J, partial, GQA, scalings...)."""
    return tiny_layout_model(request.param)


@pytest.fixture(scope="session")
def smol():
    """The embedded SmolLM2-135M-Instruct as a HookedTransformer (fp32, CPU). Cached after first load."""
    from rope_interp import load_model

    torch.set_grad_enabled(True)
    return load_model("smollm2-135m")


@pytest.fixture(scope="session")
def english_tokens(smol):
    """>= 256 tokens of real English text from the bundled corpus, as [1, pos]."""
    from rope_interp.data import load_text

    toks = smol.to_tokens(load_text())
    assert toks.shape[1] >= 256
    return toks
