"""Pythia (GPT-NeoX): the variant, its EfficientLLM sizes, and GPT-NeoX checkpoint import."""
from __future__ import annotations

import pytest
import torch

import effzoo
from model_checks import train_losses
from effzoo.cli import main
from effzoo.errors import ConfigError
from effzoo.hf import import_checkpoint
from effzoo_plugins.gpt_neox_checkpoint import split_heads_qkv

transformers = pytest.importorskip("transformers")
from transformers import GPTNeoXConfig, GPTNeoXForCausalLM  # noqa: E402

QWEN25_VOCAB, PYTHIA_VOCAB = 151_936, 50_304


def perturb(model: torch.nn.Module, scale: float = 0.05) -> torch.nn.Module:
    """Make zero biases and unit LayerNorms random too, so every tensor's mapping is exercised."""
    with torch.no_grad():
        for param in model.parameters():
            param.add_(torch.randn_like(param) * scale)
    return model.eval()


# -- the variant --------------------------------------------------------------------------------
def test_pythia_is_an_attention_free_group_variant_with_its_own_sizes() -> None:
    spec = effzoo.REGISTRY.variant("pythia")
    assert (spec.group, spec.family) == ("attention-free", "pythia")
    assert "pythia" in set(effzoo.list_variants(group="attention-free"))
    assert effzoo.REGISTRY.variant("gpt_neox").name == "pythia"
    assert {"tiny", "small", "0.5B", "1.5B", "3B"} <= set(effzoo.REGISTRY.size_table("pythia"))


def test_config_is_the_gpt_neox_block() -> None:
    cfg = effzoo.make_config("pythia", "0.5B")
    assert (cfg.block, cfg.attention, cfg.position, cfg.ffn, cfg.norm) == (
        "transformer", "gqa", "rope", "gelu", "layernorm")
    assert cfg.parallel_residual and cfg.qkv_bias and cfg.out_bias and cfg.mlp_bias and not cfg.tie_embeddings
    assert (cfg.norm_eps, cfg.rope_theta, cfg.rotary_pct, cfg.rotary_dim) == (1e-5, 10_000.0, 0.25, 16)
    assert (cfg.n_kv_heads, cfg.ffn_hidden, cfg.vocab_size) == (cfg.n_heads, 4 * cfg.d_model, QWEN25_VOCAB)
    assert effzoo.make_config("pythia", "small", n_heads=16).n_kv_heads == 8  # MHA default from the preset


def expected_params(layers: int, d: int, vocab: int) -> int:
    """Untied embedding + head, and per layer: qkv 3d²+3d, out d²+d, MLP 8d²+5d, two LayerNorms 4d."""
    per_layer = 3 * d * d + 3 * d + d * d + d + 8 * d * d + 5 * d + 4 * d
    return 2 * vocab * d + layers * per_layer + 2 * d


@pytest.mark.parametrize(
    "size,layers,d,heads,params",
    [("0.5B", 24, 1024, 16, 613_476_352), ("1.5B", 32, 2048, 16, 2_233_798_656), ("3B", 32, 2560, 32, 3_295_564_800)],
)
def test_efficientllm_shapes_and_parameter_counts(size: str, layers: int, d: int, heads: int, params: int) -> None:
    stats = effzoo.info("pythia", size)
    assert (stats["layers"], stats["d_model"], stats["config"]["n_heads"]) == (layers, d, heads)
    assert stats["params"] == expected_params(layers, d, QWEN25_VOCAB) == params
    assert stats["kv_cache_bytes_per_token"] == layers * 2 * d * 2


def test_pythia_vocabulary_gives_the_real_pythia_410m_count(capsys) -> None:
    assert effzoo.info("pythia", "0.5B", vocab_size=PYTHIA_VOCAB)["params"] == 405_334_016
    assert main(["info", "pythia", "--size", "0.5B"]) == 0
    assert "613,476,352" in capsys.readouterr().out


def test_tiny_trains_and_cached_decoding_equals_full_forward() -> None:
    model = effzoo.build("pythia", "tiny")
    batch = torch.randint(0, 512, (2, 17))
    losses = train_losses(model, batch, steps=4)
    assert losses[-1] < losses[0]
    model.eval()
    generated = model.generate(batch[:, :5], 6)
    with torch.no_grad():
        full = model(generated).logits[:, 4:-1].argmax(-1)
    assert torch.equal(full, generated[:, 5:])


# -- GPT-NeoX import ----------------------------------------------------------------------------
def test_fused_qkv_layout_is_deinterleaved_per_head() -> None:
    heads, head_dim = 3, 2
    # row label = 100·head + 10·part + dim, in GPT-NeoX's (head, part, dim) order
    fused = torch.tensor([100 * h + 10 * p + i for h in range(heads) for p in range(3) for i in range(head_dim)])
    split = split_heads_qkv(fused, heads, head_dim).tolist()
    assert split == [100 * h + 10 * p + i for p in range(3) for h in range(heads) for i in range(head_dim)]
    weight = fused[:, None].expand(-1, 4).float()
    assert torch.equal(split_heads_qkv(weight, heads, head_dim)[:, 0].long(), torch.tensor(split))


def tiny_neox(tmp_path, **settings) -> tuple:
    shape = dict(vocab_size=101, hidden_size=64, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4,
                 max_position_embeddings=64, rotary_pct=0.25, rotary_emb_base=10_000)
    config = GPTNeoXConfig(**{**shape, **settings})
    model = perturb(GPTNeoXForCausalLM(config))
    model.save_pretrained(tmp_path / "neox")
    return model, tmp_path / "neox"


@pytest.mark.parametrize(
    "settings",
    [
        dict(use_parallel_residual=True),
        dict(use_parallel_residual=False, rotary_pct=0.5, rotary_emb_base=777),
        dict(use_parallel_residual=True, attention_bias=False, tie_word_embeddings=True),
    ],
    ids=["parallel", "sequential-rotary50", "no-attention-bias-tied"],
)
def test_gpt_neox_import_matches_transformers(settings: dict, tmp_path) -> None:
    reference, directory = tiny_neox(tmp_path, **settings)
    model = import_checkpoint(directory)
    cfg = model.config
    assert cfg.variant == "pythia" and cfg.parallel_residual is settings["use_parallel_residual"]
    assert cfg.rotary_dim == int(16 * settings.get("rotary_pct", 0.25))
    ids = torch.randint(0, 101, (2, 13))
    with torch.no_grad():
        torch.testing.assert_close(model(ids).logits, reference(ids).logits, rtol=0, atol=1e-4)
    assert torch.equal(model.generate(ids, 5), reference.generate(ids, max_new_tokens=5, do_sample=False))


def test_original_pythia_tensor_names_are_understood(tmp_path) -> None:
    """Checkpoints on the Hub keep ``embed_out`` and per-layer mask / inv_freq buffers."""
    reference, directory = tiny_neox(tmp_path)
    from safetensors.torch import load_file, save_file

    tensors = load_file(str(directory / "model.safetensors"))
    tensors["embed_out.weight"] = tensors.pop("lm_head.weight", tensors.get("embed_out.weight"))
    tensors["gpt_neox.layers.0.attention.bias"] = torch.ones(1, 1, 4, 4, dtype=torch.bool).tril()
    tensors["gpt_neox.layers.0.attention.masked_bias"] = torch.tensor(-1e9)
    tensors["gpt_neox.layers.0.attention.rotary_emb.inv_freq"] = torch.ones(2)
    save_file(tensors, str(directory / "model.safetensors"))
    model = import_checkpoint(directory)
    ids = torch.randint(0, 101, (1, 9))
    with torch.no_grad():
        torch.testing.assert_close(model(ids).logits, reference(ids).logits, rtol=0, atol=1e-4)


@pytest.mark.parametrize(
    "settings,message",
    [
        (dict(hidden_act="gelu_new"), "hidden_act"),
        (dict(rope_scaling={"rope_type": "dynamic", "factor": 2.0}), "rope scaling"),
        (dict(rotary_pct=0.3125), "odd rotary width"),
    ],
    ids=["activation", "rope-scaling", "odd-rotary"],
)
def test_unsupported_gpt_neox_configs_are_rejected(settings: dict, message: str, tmp_path) -> None:
    GPTNeoXConfig(vocab_size=101, hidden_size=64, intermediate_size=256, num_hidden_layers=2,
                  num_attention_heads=4, **settings).save_pretrained(tmp_path)
    with pytest.raises(ConfigError, match=message):
        import_checkpoint(tmp_path)
