"""Hugging Face interop: Auto classes over effzoo checkpoints, and Qwen2 checkpoint import."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

import effzoo
from effzoo.errors import ConfigError, UnknownNameError
from effzoo.hf import import_checkpoint, register_auto_classes

transformers = pytest.importorskip("transformers")
from transformers import AutoConfig, AutoModelForCausalLM, Qwen2Config, Qwen2ForCausalLM  # noqa: E402

from effzoo.hf.cache import CACHE_NAME  # noqa: E402

VARIANTS = effzoo.list_variants()
# transformers' generate over a KV cache and, where a plugin provides one, over a recurrent state
GENERATE_VARIANTS = ["gqa", "pythia"] + effzoo.list_variants(recurrent=True)[:1]


@pytest.fixture(scope="module", autouse=True)
def _auto_classes() -> None:
    register_auto_classes()


def perturb(model: torch.nn.Module, scale: float = 0.05) -> torch.nn.Module:
    """Make zero biases and unit norms random too, so every tensor's mapping is exercised."""
    with torch.no_grad():
        for param in model.parameters():
            param.add_(torch.randn_like(param) * scale)
    return model.eval()


# -- effzoo checkpoints through transformers' Auto classes --------------------------------------
def test_import_effzoo_does_not_import_transformers() -> None:
    code = "import sys, effzoo, effzoo.hf; sys.exit('transformers' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


def test_model_type_is_namespaced_and_registration_is_idempotent() -> None:
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING_NAMES

    assert "effzoo" not in CONFIG_MAPPING_NAMES  # no clash with a transformers model_type
    register_auto_classes()
    register_auto_classes()
    from effzoo.hf import EffzooConfig, EffzooForCausalLM

    assert type(AutoConfig.for_model("effzoo")) is EffzooConfig
    assert AutoModelForCausalLM._model_mapping[EffzooConfig] is EffzooForCausalLM


@pytest.mark.parametrize("variant", VARIANTS)
def test_every_variant_loads_with_auto_model_and_back(variant: str, tmp_path) -> None:
    model = effzoo.build(variant, "tiny").eval()
    model.save_pretrained(tmp_path / "effzoo")
    hf, info = AutoModelForCausalLM.from_pretrained(tmp_path / "effzoo", output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    ids = torch.randint(0, model.config.vocab_size, (1, 6))
    with torch.no_grad():
        expected = model(ids).logits
        torch.testing.assert_close(hf(ids).logits, expected, rtol=0, atol=1e-6)

    hf.save_pretrained(tmp_path / "transformers")  # the other direction: transformers writes, effzoo reads
    again = effzoo.from_pretrained(tmp_path / "transformers")
    assert again.config == model.config
    with torch.no_grad():
        torch.testing.assert_close(again(ids).logits, expected, rtol=0, atol=1e-6)


@pytest.mark.parametrize("variant", GENERATE_VARIANTS)
def test_transformers_generate_equals_effzoo_generate(variant: str, tmp_path) -> None:
    model = effzoo.build(variant, "tiny").eval()
    model.save_pretrained(tmp_path / "m")
    hf = AutoModelForCausalLM.from_pretrained(tmp_path / "m")
    ids = torch.randint(0, model.config.vocab_size, (2, 5))
    assert torch.equal(hf.generate(ids, max_new_tokens=4, do_sample=False), model.generate(ids, 4))


@pytest.fixture
def hf_gqa(tmp_path):
    model = effzoo.build("gqa", "tiny").eval()
    model.save_pretrained(tmp_path / "m")
    return model, AutoModelForCausalLM.from_pretrained(tmp_path / "m")


def test_sampling_generate(hf_gqa) -> None:
    model, hf = hf_gqa
    ids = torch.randint(0, 512, (2, 5))
    top1 = hf.generate(ids, max_new_tokens=6, do_sample=True, top_k=1)  # sampling among one token: greedy
    assert torch.equal(top1, model.generate(ids, 6))
    runs = []
    for _ in range(2):
        torch.manual_seed(0)
        runs.append(hf.generate(ids, max_new_tokens=6, do_sample=True, temperature=1.5))
    assert torch.equal(runs[0], runs[1]) and runs[0].shape == (2, 11) and torch.equal(runs[0][:, :5], ids)
    triple = hf.generate(ids, max_new_tokens=3, do_sample=True, num_return_sequences=3)
    assert triple.shape == (6, 8)


def test_stopping_criteria_eos_and_streamers(hf_gqa) -> None:
    from transformers import StoppingCriteria, StoppingCriteriaList
    from transformers.generation.streamers import BaseStreamer

    model, hf = hf_gqa
    ids = torch.randint(0, 512, (1, 4))
    greedy = model.generate(ids, 8)

    class AfterTwo(StoppingCriteria):
        def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor, **kwargs) -> torch.Tensor:
            return torch.full((input_ids.shape[0],), input_ids.shape[1] >= 6, dtype=torch.bool)

    out = hf.generate(ids, max_new_tokens=8, do_sample=False, stopping_criteria=StoppingCriteriaList([AfterTwo()]))
    assert torch.equal(out, greedy[:, :6])
    eos = int(greedy[0, 6])
    first_eos = 4 + int((greedy[0, 4:] == eos).nonzero()[0])
    out = hf.generate(ids, max_new_tokens=8, do_sample=False, eos_token_id=eos, pad_token_id=0)
    assert torch.equal(out, greedy[:, : first_eos + 1])

    class Collect(BaseStreamer):
        def __init__(self) -> None:
            self.tokens: list[torch.Tensor] = []
            self.ended = False

        def put(self, value: torch.Tensor) -> None:
            self.tokens.append(value.reshape(-1))

        def end(self) -> None:
            self.ended = True

    streamer = Collect()
    out = hf.generate(ids, max_new_tokens=5, do_sample=False, streamer=streamer)
    assert streamer.ended and torch.equal(torch.cat(streamer.tokens), out[0])


@pytest.mark.parametrize("name", ["cache", "past_key_values"])
def test_a_given_cache_is_used_under_either_name(name: str, hf_gqa) -> None:
    model, hf = hf_gqa
    ids = torch.randint(0, 512, (2, 5))
    cache = hf.new_cache(2, 16)
    assert isinstance(cache, transformers.Cache) and cache.get_seq_length() == 0
    assert torch.equal(hf.generate(ids, max_new_tokens=4, do_sample=False, **{name: cache}), model.generate(ids, 4))
    assert cache.get_seq_length() == 8  # the last token is returned, never fed

    with torch.no_grad():
        full = hf(ids).logits
        out = hf(ids[:, :3], use_cache=True)
        state = out[CACHE_NAME]  # the output field this transformers release names the cache
        step = hf(ids[:, 3:], **{name: state}).logits
    assert state.get_seq_length() == 5
    torch.testing.assert_close(step, full[:, 3:], rtol=0, atol=1e-5)
    with pytest.raises(ConfigError, match="not both"):
        hf(ids, cache=state, past_key_values=state)
    with pytest.raises(ConfigError, match="beam"):
        state.reorder_cache(torch.zeros(2, dtype=torch.long))


@pytest.mark.parametrize("tie", [True, False], ids=["tied", "untied"])
def test_tied_and_untied_heads_round_trip(tie: bool, tmp_path) -> None:
    model = perturb(effzoo.build("gqa", "tiny", tie_embeddings=tie))
    model.save_pretrained(tmp_path / "m")
    hf = AutoModelForCausalLM.from_pretrained(tmp_path / "m")
    assert hf.config.tie_word_embeddings is tie
    assert (hf.get_output_embeddings() is None) is tie
    assert torch.equal(hf.model.output_weight, model.output_weight)
    hf.save_pretrained(tmp_path / "again")
    from safetensors.torch import load_file

    assert ("head.weight" in load_file(str(tmp_path / "again" / "model.safetensors"))) is not tie


def test_labels_give_the_shifted_causal_loss(tmp_path) -> None:
    effzoo.build("gqa", "tiny").save_pretrained(tmp_path / "m")
    hf = AutoModelForCausalLM.from_pretrained(tmp_path / "m")
    ids = torch.randint(0, 512, (2, 8))
    labels = ids.clone()
    labels[0, 3] = -100
    out = hf(ids, labels=labels)
    manual = torch.nn.functional.cross_entropy(
        out.logits[:, :-1].reshape(-1, 512), labels[:, 1:].reshape(-1), ignore_index=-100
    )
    torch.testing.assert_close(out.loss, manual)
    out.loss.backward()
    assert hf.model.embed.weight.grad is not None


@pytest.mark.parametrize("method", ["activation_checkpointing_enable", "gradient_checkpointing_enable"])
def test_activation_checkpointing_keeps_the_gradients(method: str, tmp_path) -> None:
    effzoo.build("pythia", "tiny").save_pretrained(tmp_path / "m")
    hf = AutoModelForCausalLM.from_pretrained(tmp_path / "m").train()
    ids = torch.randint(0, 512, (2, 8))
    hf(ids, labels=ids).loss.backward()
    expected = hf.model.blocks[0].mixer.qkv_proj.weight.grad.clone()
    hf.zero_grad()
    getattr(hf, method)()  # the new name and the one every transformers 5.x has
    assert hf.model.gradient_checkpointing
    hf(ids, labels=ids).loss.backward()
    torch.testing.assert_close(hf.model.blocks[0].mixer.qkv_proj.weight.grad, expected)
    with pytest.raises(ConfigError, match="use_reentrant"):
        getattr(hf, method)({"use_reentrant": True})
    hf.gradient_checkpointing_disable()
    assert not hf.model.gradient_checkpointing


def test_from_config_uses_effzoo_init() -> None:
    from effzoo.hf import EffzooConfig

    config = effzoo.make_config("pythia", "tiny")
    hf = AutoModelForCausalLM.from_config(EffzooConfig.from_model_config(config))
    block = hf.model.blocks[0]
    residual_std = config.init_std / (2 * config.n_layers) ** 0.5
    assert abs(block.mixer.out_proj.weight.std().item() - residual_std) < 0.3 * residual_std
    assert torch.equal(block.attn_norm.weight, torch.ones(config.d_model))
    assert torch.allclose(hf.model.position.inv_freq, effzoo.build_from_config(config).position.inv_freq)


def test_effzoo_config_is_validated() -> None:
    from effzoo.hf import EffzooConfig

    with pytest.raises(ConfigError, match="n_layer"):
        EffzooConfig(effzoo={"n_layer": 2})


def test_padding_masks_and_beam_search_are_refused(tmp_path) -> None:
    effzoo.build("gqa", "tiny").save_pretrained(tmp_path / "m")
    hf = AutoModelForCausalLM.from_pretrained(tmp_path / "m")
    ids = torch.randint(0, 512, (2, 6))
    mask = torch.ones_like(ids)
    mask[0, 0] = 0
    with pytest.raises(ConfigError, match="padded"):
        hf(ids, attention_mask=mask)
    with pytest.raises(ConfigError, match="beam search"):
        hf.generate(ids, max_new_tokens=2, num_beams=2, do_sample=False)


# -- Qwen2 import -------------------------------------------------------------------------------
def tiny_qwen2(tmp_path, *, tie: bool, kv_heads: int = 2, head_dim: int | None = None, **extra) -> tuple:
    config = Qwen2Config(
        vocab_size=101, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=kv_heads, max_position_embeddings=64, tie_word_embeddings=tie,
        rope_parameters={"rope_type": "default", "rope_theta": 5000.0}, **extra,
    )
    if head_dim is not None:
        config.head_dim = head_dim
    model = perturb(Qwen2ForCausalLM(config))
    model.save_pretrained(tmp_path / "qwen2")
    return model, tmp_path / "qwen2"


@pytest.mark.parametrize(
    "tie,kv_heads,head_dim",
    [(True, 2, None), (False, 1, None), (False, 2, 24)],
    ids=["tied-gqa2", "untied-mqa", "untied-head_dim24"],
)
def test_qwen2_import_matches_transformers(tie: bool, kv_heads: int, head_dim: int | None, tmp_path) -> None:
    reference, directory = tiny_qwen2(tmp_path, tie=tie, kv_heads=kv_heads, head_dim=head_dim)
    model = import_checkpoint(directory)
    cfg = model.config
    assert (cfg.variant, cfg.tie_embeddings, cfg.n_kv_heads, cfg.rope_theta) == ("gqa", tie, kv_heads, 5000.0)
    assert cfg.head_dim == (head_dim or 16) and cfg.qkv_bias
    ids = torch.randint(0, 101, (2, 13))
    with torch.no_grad():
        torch.testing.assert_close(model(ids).logits, reference(ids).logits, rtol=0, atol=1e-4)
    expected = reference.generate(ids, max_new_tokens=6, do_sample=False)
    assert torch.equal(model.generate(ids, 6), expected)


def test_qwen2_sharded_checkpoint_and_dtype(tmp_path) -> None:
    reference, _ = tiny_qwen2(tmp_path, tie=False)
    reference.save_pretrained(tmp_path / "sharded", max_shard_size="40KB")
    assert (tmp_path / "sharded" / "model.safetensors.index.json").is_file()
    model = import_checkpoint(tmp_path / "sharded", dtype="bfloat16")
    assert model.embed.weight.dtype == torch.bfloat16
    assert torch.equal(model.embed.weight, reference.model.embed_tokens.weight.to(torch.bfloat16))


@pytest.mark.parametrize(
    "settings,message",
    [
        (dict(use_sliding_window=True, sliding_window=8, max_window_layers=0), "sliding-window"),
        (dict(rope_parameters={"rope_type": "linear", "factor": 2.0, "rope_theta": 1e4}), "rope scaling"),
        (dict(hidden_act="gelu"), "hidden_act"),
    ],
    ids=["sliding-window", "rope-scaling", "activation"],
)
def test_unsupported_qwen2_configs_are_rejected(settings: dict, message: str, tmp_path) -> None:
    base = dict(vocab_size=101, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
                num_key_value_heads=2)
    Qwen2Config(**{**base, **settings}).save_pretrained(tmp_path)  # config alone: rejected before any weight
    with pytest.raises(ConfigError, match=message):
        import_checkpoint(tmp_path)


def test_unknown_model_type_lists_the_supported_ones(tmp_path) -> None:
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama"}))
    with pytest.raises(UnknownNameError, match="qwen2") as err:
        import_checkpoint(tmp_path)
    assert "gpt_neox" in str(err.value)


def test_broken_weights_are_reported_with_the_file(tmp_path) -> None:
    _, directory = tiny_qwen2(tmp_path, tie=True)
    weights = directory / "model.safetensors"
    from safetensors.torch import load_file, save_file

    tensors = load_file(str(weights))
    save_file({k: v for k, v in tensors.items() if not k.endswith("1.self_attn.k_proj.bias")}, str(weights))
    with pytest.raises(ConfigError, match=r"missing tensor 'model\.layers\.1\.self_attn\.k_proj\.bias'"):
        import_checkpoint(directory)
    save_file({**tensors, "model.layers.0.extra.weight": torch.zeros(1)}, str(weights))
    with pytest.raises(ConfigError, match=r"unexpected tensors model\.layers\.0\.extra\.weight"):
        import_checkpoint(directory)
    weights.write_bytes(weights.read_bytes()[:100])
    with pytest.raises(ConfigError, match="model.safetensors"):
        import_checkpoint(directory)


def test_import_checkpoint_reads_effzoo_directories_too(tmp_path) -> None:
    model = effzoo.build("gqa", "tiny")
    model.save_pretrained(tmp_path / "m")
    again = import_checkpoint(tmp_path / "m")
    assert again.config == model.config and torch.equal(again.embed.weight, model.embed.weight)
