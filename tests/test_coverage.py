"""The coverage matrix: every (family, model class) pair loads the exact network or is refused.

A tiny random model of each family (built offline from its transformers config, saved to a temporary
dir) is loaded both ways, ``load_model(dir)`` (HookedTransformer) and ``load_model(dir, bridge=True)``.
An *exact* pair matches transformers' own forward (logits within 1e-4 of the largest logit) and its
rotary frequencies are the source's ``inv_freq`` (relative 1e-6), and a band ablation equals the same
ablation done in the family's own rotary function (1e-3); every other pair raises a
``RopeInterpError`` that says why. The README's support table is rendered from this matrix.
"""

import logging
import re
import warnings
from pathlib import Path

import pytest
import torch

from rope_interp import RotaryBands, load_model
from rope_interp.errors import ModelMismatchError, RopeInterpError
from rope_interp.model.testing import HF_FAMILIES, tiny_hf_dir

CLASSES = ("hooked", "bridge")
PARAMS = [pytest.param("hooked", marks=pytest.mark.hooked), "bridge"]  # TL 4 has no HookedTransformer
README = Path(__file__).resolve().parents[1] / "README.md"


def _load(path, cls):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        logging.disable(logging.WARNING)
        try:
            return load_model(str(path), bridge=cls == "bridge")
        finally:
            logging.disable(logging.NOTSET)


def _reason(err: RopeInterpError) -> str:
    """A short reason for the README table, read from the error."""
    msg = str(err)
    if isinstance(err, ModelMismatchError):
        return "TransformerLens drops its rope scaling"
    if "NoPE" in msg:
        return "NoPE layers (no_rope_layers)"
    if "never fires hook_rot_q" in msg:
        return "the bridge never fires hook_rot_q/k"
    if "cannot convert" in msg:
        return "TransformerLens cannot convert it"
    return type(err).__name__


def _inv_freq(hf, layer):
    """``[n_bands]`` the source's own frequencies for ``layer``: its rotary module's ``inv_freq`` buffer
    (``{layer_type}_inv_freq`` for per-type modules), or GPT-J's ``embed_positions`` table."""
    cfg = hf.config
    rot = next((m for m in hf.modules() if type(m).__name__.endswith("RotaryEmbedding")), None)
    if rot is None:  # GPT-J: embed_positions = cat(sin, cos) of pos * inv_freq
        table = next(m for m in hf.modules() if hasattr(m, "embed_positions")).embed_positions.double()
        half = table.shape[1] // 2
        return torch.atan2(table[1, :half], table[1, half:])
    types = getattr(cfg, "layer_types", None)
    buffers = dict(rot.named_buffers())
    name = f"{types[layer]}_inv_freq" if types and f"{types[layer]}_inv_freq" in buffers else "inv_freq"
    return buffers[name].double()


@pytest.fixture(scope="module")
def matrix(tmp_path_factory):
    """``{(family, class): (model or error, HF source)}`` for every family of HF_FAMILIES."""
    from transformers import AutoModelForCausalLM

    out = {}
    for family in HF_FAMILIES:
        path = tiny_hf_dir(tmp_path_factory.mktemp(family) / "m", model_type=family, d_model=32)
        hf = AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32).eval()
        for cls in CLASSES:
            try:
                out[family, cls] = (_load(path, cls), hf)
            except RopeInterpError as err:
                out[family, cls] = (err, hf)
    return out


@pytest.mark.parametrize("cls", PARAMS)
@pytest.mark.parametrize("family", list(HF_FAMILIES))
def test_every_pair_is_exact_or_refused(matrix, family, cls):
    model, hf = matrix[family, cls]
    if isinstance(model, RopeInterpError):
        assert _reason(model) != type(model).__name__, f"refused without a known reason: {model}"
        return
    tokens = (torch.arange(40) * 5 + 3).remainder(hf.config.vocab_size)[None]
    with torch.no_grad():
        ref = hf(tokens).logits
        ours = model(tokens)
    assert ((ours - ref).abs().max() / ref.abs().max()).item() <= 1e-4
    rb = RotaryBands.from_model(model)
    for layer in range(rb.n_layers):
        theirs = _inv_freq(hf, layer)
        err = ((rb.freqs[layer] - theirs).abs() / theirs).max().item()
        assert err <= 1e-6, (layer, err)


@pytest.mark.hooked
def test_silently_different_conversions_are_refused(matrix):
    """Regression (issue 21): linear / YaRN Llama and longrope Phi-3 loaded as a HookedTransformer
    without their scaling (band frequencies ×4 off, logits 0.3% off); now refused, and the bridge is exact."""
    for family in ("llama_linear", "llama_yarn", "phi3_longrope"):
        err, _ = matrix[family, "hooked"]
        assert isinstance(err, ModelMismatchError), family
        assert "bridge=True" in str(err) and "rotary frequencies differ" in str(err)
    for family in ("llama_linear", "llama_yarn"):
        assert not isinstance(matrix[family, "bridge"][0], RopeInterpError)


def test_nope_layers_are_never_reported_as_rotating(matrix):
    """SmolLM3 skips RoPE on layer 1 (no_rope_layers=[1, 0]): the bridge is refused, not given band tables."""
    err, _ = matrix["smollm3", "bridge"]
    assert isinstance(err, RopeInterpError) and "NoPE" in str(err) and "layers [1]" in str(err)


def test_bridge_without_tokenizer_files_is_a_clear_error(tmp_path):
    from rope_interp.errors import ModelNotAvailableError

    path = tiny_hf_dir(tmp_path / "m", tokenizer=False)
    with pytest.raises(ModelNotAvailableError, match="no tokenizer files"):
        _load(path, "bridge")
    model = _load(path, "hooked")  # token ids only
    assert model.tokenizer is None


def render_table(matrix) -> str:
    """The README's support table (markdown) from the matrix."""
    lines = [
        "| family (tiny test model) | `load_model(dir)` | `load_model(dir, bridge=True)` |",
        "|---|---|---|",
    ]
    for family in HF_FAMILIES:
        cells = []
        for cls in CLASSES:
            model = matrix[family, cls][0]
            cells.append(f"refused: {_reason(model)}" if isinstance(model, RopeInterpError) else "exact")
        lines.append(f"| `{family}` | {cells[0]} | {cells[1]} |")
    return "\n".join(lines)


@pytest.mark.hooked
def test_readme_support_table_is_the_matrix(matrix):
    """The README's "Loading models" table is generated from this matrix (paste render_table's output)."""
    text = README.read_text()
    found = re.search(r"\| family \(tiny test model\).*?(?=\n\n)", text, re.S)
    table = render_table(matrix)
    assert found is not None and found.group(0) == table, "README support table is stale:\n" + table


@pytest.mark.hooked
@pytest.mark.parametrize("damage", ["weights", "scale"])
def test_the_load_check_sees_logits_and_scale(matrix, damage):
    """``check_against_source`` refuses a model whose weights (logits) or ``q·k`` divisor differ from its
    source's, even when every rotary frequency agrees."""
    import copy

    from rope_interp.model.load import check_against_source

    model, hf = matrix["llama", "hooked"]
    model = copy.deepcopy(model)
    check_against_source(model, hf, "tiny", fix="fix")  # the loaded model passes
    with torch.no_grad():
        if damage == "weights":
            model.blocks[1].mlp.W_out.mul_(1.01)
        else:
            model.blocks[0].attn.attn_scale = model.blocks[0].attn.attn_scale * 1.01
    match = "logits differ" if damage == "weights" else "layer 0 divides q·k"
    with pytest.raises(ModelMismatchError, match=match):
        check_against_source(model, hf, "tiny", fix="fix")


def _unrotated_source(hf, band):
    """A copy of ``hf`` whose own rotary function leaves ``band`` unrotated: its ``inv_freq`` entry (every
    per-layer-type buffer) set to 0, or for GPT-J its ``embed_positions`` sin column 0 and cos column 1."""
    import copy

    hf = copy.deepcopy(hf)
    rot = next((m for m in hf.modules() if type(m).__name__.endswith("RotaryEmbedding")), None)
    with torch.no_grad():
        if rot is not None:
            for name, buf in rot.named_buffers():
                if name.endswith("inv_freq"):
                    buf[band] = 0.0
        else:
            for m in hf.modules():
                if hasattr(m, "embed_positions"):
                    half = m.embed_positions.shape[1] // 2
                    m.embed_positions[:, band] = 0.0
                    m.embed_positions[:, half + band] = 1.0
    return hf


@pytest.mark.parametrize("cls", PARAMS)
@pytest.mark.parametrize("family", list(HF_FAMILIES))
def test_band_ablation_matches_the_family_rotary_function(matrix, family, cls):
    """rope_interp's ``no_rotation`` of band 1 on every layer (q and k) equals the source model run with
    that band's frequency set to 0 in its own rotary function: logits within 1e-3 of the largest and within
    1% of the ablation's own effect."""
    from rope_interp import ablate_bands

    model, hf = matrix[family, cls]
    if isinstance(model, RopeInterpError):
        return  # refused: test_every_pair_is_exact_or_refused checks the reason
    tokens = (torch.arange(40) * 5 + 3).remainder(hf.config.vocab_size)[None]
    with torch.no_grad():
        ref = _unrotated_source(hf, 1)(tokens).logits
        base = hf(tokens).logits
        with ablate_bands(model, [1], mode="no_rotation"):
            ours = model(tokens)
    effect, err = (base - ref).abs().max().item(), (ours - ref).abs().max().item()
    assert effect > 1e-5 * ref.abs().max().item()  # the ablation changes the output
    assert err <= 1e-3 * ref.abs().max().item() and err <= 1e-2 * effect
