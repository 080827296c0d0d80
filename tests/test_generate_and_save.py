"""Decoding with the cache, and atomic save/load."""
from __future__ import annotations

import json

import pytest
import torch

import effzoo
from effzoo.errors import ConfigError


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return effzoo.build("gqa", "tiny").eval()


def test_greedy_generation_equals_repeated_full_forward(model):
    prompt = torch.randint(0, 512, (2, 7))
    generated = model.generate(prompt, 9)
    tokens = prompt
    with torch.no_grad():
        for _ in range(9):
            nxt = model(tokens).logits[:, -1].argmax(-1, keepdim=True)
            tokens = torch.cat([tokens, nxt], dim=1)
    assert torch.equal(generated, tokens)


def test_sampling_is_reproducible_with_a_generator(model):
    prompt = torch.randint(0, 512, (1, 5))
    a = model.generate(prompt, 12, temperature=0.8, top_k=50, top_p=0.9, generator=torch.Generator().manual_seed(7))
    b = model.generate(prompt, 12, temperature=0.8, top_k=50, top_p=0.9, generator=torch.Generator().manual_seed(7))
    assert torch.equal(a, b) and a.shape == (1, 17)


def test_eos_stops_and_pads(model):
    prompt = torch.randint(0, 512, (1, 4))
    first = model.generate(prompt, 1)[0, -1].item()
    out = model.generate(prompt, 10, eos_token_id=first)
    assert out.shape == (1, 5) and out[0, -1].item() == first


def test_generation_past_max_seq_len_is_refused(model):
    with pytest.raises(ConfigError, match="max_seq_len"):
        model.generate(torch.zeros(1, 1000, dtype=torch.long), 100)


def test_cache_overflow_is_an_error(model):
    cache = model.new_cache(1, 4)
    with pytest.raises(RuntimeError, match="overflow"):
        model(torch.zeros(1, 5, dtype=torch.long), cache=cache)


def test_save_load_round_trip_keeps_config_and_weights(model, tmp_path):
    model.save_pretrained(tmp_path / "m")
    document = json.loads((tmp_path / "m" / "config.json").read_text())
    assert document["model_type"] == "effzoo" and document["effzoo"]["variant"] == "gqa"
    again = effzoo.from_pretrained(tmp_path / "m")
    assert again.config == model.config
    ids = torch.randint(0, 512, (1, 9))
    with torch.no_grad():
        assert torch.equal(again(ids).logits, model(ids).logits)


def test_tied_embeddings_stay_tied_after_load(model, tmp_path):
    model.save_pretrained(tmp_path / "m")
    again = effzoo.from_pretrained(tmp_path / "m")
    assert again.head is None and again.output_weight.data_ptr() == again.embed.weight.data_ptr()
    untied = effzoo.build("gqa", "tiny", tie_embeddings=False)
    untied.save_pretrained(tmp_path / "u")
    loaded = effzoo.from_pretrained(tmp_path / "u")
    assert torch.equal(loaded.head.weight, untied.head.weight)


def test_failed_save_leaves_previous_copy_intact(model, tmp_path, monkeypatch):
    model.save_pretrained(tmp_path / "m")
    before = (tmp_path / "m" / "model.safetensors").read_bytes()

    def explode(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr("effzoo.pretrained.save_model", explode)
    with pytest.raises(OSError, match="disk full"):
        effzoo.build("gqa", "tiny").save_pretrained(tmp_path / "m")
    assert (tmp_path / "m" / "model.safetensors").read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]


def test_mismatched_weights_are_reported(model, tmp_path):
    model.save_pretrained(tmp_path / "m")
    document = json.loads((tmp_path / "m" / "config.json").read_text())
    document["effzoo"]["ffn_hidden"] = 200
    (tmp_path / "m" / "config.json").write_text(json.dumps(document))
    with pytest.raises(ConfigError, match="do not match"):
        effzoo.from_pretrained(tmp_path / "m")


def test_loading_a_non_effzoo_directory_explains(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "qwen2"}))
    with pytest.raises(ConfigError, match="import"):
        effzoo.from_pretrained(tmp_path)
