"""The README's ```python blocks run as written, in order, in one namespace.

Fast: on a tiny random HF Llama (6 layers, 8 bands, a word-level tokenizer) that replaces the
README's ``ri.load_model("smollm2-135m")`` — the only substitution. Slow: block 1 on the
embedded SmolLM2-135M itself (blocks 2 and 3, full sweeps and analyses, take many minutes on a CPU).

The README leaves a few names to the reader (``batches``, ``clean``, ``corrupted``, ``paris``,
``rome``, ``text``); ``PLACEHOLDERS`` defines them before the block that first uses them, as a
reader would.
"""

from __future__ import annotations

import re
from pathlib import Path

import matplotlib
import pytest
import torch

matplotlib.use("Agg")

README = Path(__file__).resolve().parents[1] / "README.md"
LOAD = 'ri.load_model("smollm2-135m")'

PLACEHOLDERS = {
    0: 'batches = ["The capital of France is Paris.", "The capital of Italy is Rome, an old city."]',
    1: (
        'clean, corrupted = "The capital of France is", "The capital of Italy is"\n'
        'paris = model.to_tokens(" Paris", prepend_bos=False)[0, 0].item()\n'
        'rome = model.to_tokens(" Rome", prepend_bos=False)[0, 0].item()'
    ),
    2: 'text = "The capital of France is Paris. The capital of Italy is Rome. " * 3',
}


def python_blocks() -> list[str]:
    return re.findall(r"^```python\n(.*?)^```", README.read_text(), flags=re.S | re.M)


def run_blocks(blocks: list[str], load: str) -> dict:
    ns: dict = {}
    for i, block in enumerate(blocks):
        if i in PLACEHOLDERS:
            exec(PLACEHOLDERS[i], ns)  # noqa: S102 - the README's free names
        try:
            exec(compile(block.replace(LOAD, load), f"README.md python block {i + 1}", "exec"), ns)  # noqa: S102
        except Exception as err:
            raise AssertionError(
                f"README python block {i + 1} fails as written: {type(err).__name__}: {err}\n{block}"
            ) from err
    return ns


def test_readme_has_the_blocks_this_test_knows():
    blocks = python_blocks()
    assert len(blocks) == 3, "a README python block was added or removed: update PLACEHOLDERS"
    assert LOAD in blocks[0], f"the README no longer loads the model with {LOAD}: update this test"


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    from rope_interp.model.testing import tiny_hf_dir

    return tiny_hf_dir(tmp_path_factory.mktemp("readme") / "tiny-model", n_layers=6, d_model=64)


def test_readme_blocks_run_as_written_on_a_tiny_model(tiny_dir):
    ns = run_blocks(python_blocks(), f"ri.load_model({str(tiny_dir)!r})")
    model = ns["model"]
    # what the comments promise, checked on the result
    assert ns["bs"].per_band.shape[1:3] == (4, 8)
    assert ns["cap"][5, "rot_k"].shape[2:] == (2, 8, 2)
    assert ns["stats"].mean_norm("rot_q").shape == (6, 4, 8)
    assert ns["res"].values.shape == (6, 8)
    assert torch.equal(model(ns["tokens"]), model(ns["tokens"]))  # hooks removed after each block
    assert sum(len(hp.fwd_hooks) for hp in model.hook_dict.values()) == 0


def test_readme_shift_example_changes_the_model(tiny_dir):
    import rope_interp as ri

    model = ri.load_model(str(tiny_dir))
    block = python_blocks()[1]
    call = re.search(r"ri\.ablate_bands\(model, \[3\], layers=\[2\], mode=\"shift\"[^)]*\)", block)
    assert call is not None, "the README's shift example changed: update this test"
    tokens = model.to_tokens("The capital of France is Paris. The capital of Italy is Rome.")
    hooks = eval(call.group(0) + ".fwd_hooks()", {"ri": ri, "model": model})  # noqa: S307
    changed = (model.run_with_hooks(tokens, fwd_hooks=hooks) - model(tokens)).abs().max()
    # a no-op (the old q+k shift) moves logits only by float rounding (~1e-6); a tiny random model
    # reacts weakly to one band of one layer, so the bar is well above rounding, not a size
    assert changed > 2e-5, f"the README's shift example changes the logits by only {changed:.1e}"


@pytest.mark.slow
def test_readme_block_1_runs_on_the_embedded_model():
    ns = run_blocks(python_blocks()[:1], LOAD)
    assert ns["bs"].per_band.shape[1:3] == (9, 32)
    assert ns["stats"].n_tokens > 0
