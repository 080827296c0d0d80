"""Evaluation: MMLU/CMMLU exact accuracy with a stub model whose answers we choose, prompt formats,
perplexity, reports, and the CLI on saved effzoo, run and transformers directories."""
import json
import math

import numpy as np
import pytest
import torch
from torch import nn

from effzoo.cli import main
from effzoo.data import ByteTokenizer
from effzoo.data.errors import DataError
from effzoo.eval import LanguageModel, evaluate_choices, load_language_model, load_mmlu_dir, perplexity
from effzoo.eval.mmlu import FORMATS, Question, build_prompt
from effzoo.eval.report import markdown_table

TOK = ByteTokenizer()


class BeliefModel(nn.Module):
    """Finds which known question the prompt ends with and strongly prefers the letter it believes."""

    def __init__(self, beliefs):
        super().__init__()
        self.beliefs = beliefs
        self.dummy = nn.Parameter(torch.zeros(1))

    def forward(self, ids):
        logits = torch.zeros(*ids.shape, TOK.vocab_size)
        for row in range(ids.shape[0]):
            text = TOK.decode(ids[row].tolist())
            asked = max(self.beliefs, key=lambda q: text.rfind(q))
            logits[row, :, ord(self.beliefs[asked])] = 8.0
        return logits


def write_mmlu(root):
    """Two subjects; the stub believes right on 3/4 astronomy and 1/2 law questions."""
    (root / "dev").mkdir(parents=True)
    (root / "test").mkdir()
    astro = [("Which body is a star?", "Moon", "Sun", "Mars", "Io", "B"),
             ("Closest planet to the Sun?", "Mercury", "Venus", "Earth", "Mars", "A"),
             ("Red planet?", "Venus", "Jupiter", "Mars", "Saturn", "C"),
             ("Largest planet?", "Earth", "Mars", "Venus", "Jupiter", "D")]
    law = [("A promise enforceable by law?", "contract", "poem", "song", "joke", "A"),
           ("Who decides a trial?", "baker", "tailor", "judge", "pilot", "C")]
    (root / "test" / "astronomy_test.csv").write_text("\n".join(",".join(r) for r in astro) + "\n")
    (root / "test" / "high_school_law_test.csv").write_text("\n".join(",".join(r) for r in law) + "\n")
    (root / "dev" / "astronomy_dev.csv").write_text("Dev star?,a,b,c,d,A\nDev moon?,a,b,c,d,B\n")
    (root / "dev" / "high_school_law_dev.csv").write_text("Dev law?,a,b,c,d,D\n")
    beliefs = {"Which body is a star?": "B", "Closest planet to the Sun?": "A", "Red planet?": "C",
               "Largest planet?": "A", "A promise enforceable by law?": "B", "Who decides a trial?": "C"}
    return beliefs


def write_cmmlu(root):
    (root / "dev").mkdir(parents=True)
    (root / "test").mkdir()
    header = ",Question,A,B,C,D,Answer\n"
    (root / "test" / "天文学.csv").write_text(header + "0,太阳是什么？,行星,恒星,卫星,彗星,B\n1,月亮绕着什么转？,地球,火星,太阳,金星,A\n"
                                             "2,一年有几个月？,十,十一,十二,十三,C\n")
    (root / "dev" / "天文学.csv").write_text(header + "0,示例题？,甲,乙,丙,丁,D\n")
    return {"太阳是什么？": "B", "月亮绕着什么转？": "C", "一年有几个月？": "C"}


@pytest.mark.parametrize("shots", [0, 1])
def test_mmlu_accuracy_is_exact(tmp_path, shots):
    beliefs = write_mmlu(tmp_path)
    lm = LanguageModel(BeliefModel(beliefs), TOK, "stub", max_len=4096)
    result = evaluate_choices(lm, load_mmlu_dir(tmp_path, shots=shots), task="mmlu")
    assert result["subjects"]["astronomy"] == {"correct": 3, "total": 4, "accuracy": 0.75}
    assert result["subjects"]["high_school_law"] == {"correct": 1, "total": 2, "accuracy": 0.5}
    assert result["correct"] == 4 and result["accuracy"] == pytest.approx(4 / 6)
    assert result["macro_accuracy"] == pytest.approx(0.625) and result["shots"] == shots
    table = markdown_table(result)
    assert "| astronomy | 3 | 4 | 75.00% |" in table and "66.67%" in table


def test_cmmlu_accuracy_is_exact(tmp_path):
    beliefs = write_cmmlu(tmp_path)
    lm = LanguageModel(BeliefModel(beliefs), TOK, "stub", max_len=4096)
    result = evaluate_choices(lm, load_mmlu_dir(tmp_path, shots=1), task="cmmlu")
    assert result["subjects"]["天文学"] == {"correct": 2, "total": 3, "accuracy": pytest.approx(2 / 3)}


def test_prompt_formats():
    q = Question("2+2?", ("3", "4", "5", "6"), "B")
    shot = Question("1+1?", ("2", "3", "4", "5"), "A")
    assert build_prompt(FORMATS["mmlu"], "elementary_mathematics", [shot], q) == (
        "The following are multiple choice questions (with answers) about elementary mathematics.\n\n"
        "1+1?\nA. 2\nB. 3\nC. 4\nD. 5\nAnswer: A\n\n2+2?\nA. 3\nB. 4\nC. 5\nD. 6\nAnswer:")
    assert build_prompt(FORMATS["cmmlu"], "数学", [], q) == (
        "以下是关于数学的单项选择题，请直接给出正确答案的选项。\n\n题目：2+2?\nA. 3\nB. 4\nC. 5\nD. 6\n答案是：")


def test_long_prompts_drop_shots_to_fit(tmp_path):
    beliefs = write_mmlu(tmp_path)
    lm = LanguageModel(BeliefModel(beliefs), TOK, "stub", max_len=150)
    result = evaluate_choices(lm, load_mmlu_dir(tmp_path, shots=2), task="mmlu")
    assert result["correct"] == 4


def test_bad_csv_rows_are_named(tmp_path):
    write_mmlu(tmp_path)
    (tmp_path / "test" / "astronomy_test.csv").write_text("Q,a,b,c,d,A\nQ2,a,b,c,d,E\n")
    with pytest.raises(DataError, match=r"astronomy_test\.csv, row 1: answer 'E'"):
        load_mmlu_dir(tmp_path)
    with pytest.raises(KeyError, match="Did you mean: astronomy"):
        load_mmlu_dir(tmp_path, subjects=["astronomi"])


class Uniform(nn.Module):
    def __init__(self, vocab):
        super().__init__()
        self.vocab, self.dummy = vocab, nn.Parameter(torch.zeros(1))

    def forward(self, ids):
        return torch.zeros(*ids.shape, self.vocab)


def test_perplexity_of_a_uniform_model_is_the_vocabulary():
    lm = LanguageModel(Uniform(257), TOK, "uniform", max_len=64)
    tokens = torch.randint(0, 257, (1000,)).numpy()
    stats = perplexity(lm, tokens, seq_len=100, batch_size=3)  # seq_len capped at max_len 64
    assert stats["seq_len"] == 64 and stats["tokens"] == (999 // 64) * 64
    assert stats["ppl"] == pytest.approx(257, rel=1e-5) and stats["loss"] == pytest.approx(math.log(257))
    assert perplexity(lm, tokens, seq_len=32, max_tokens=100)["tokens"] == 96


def test_cli_on_saved_model_and_run_directory(tmp_path, capsys):
    import effzoo

    model = effzoo.build("gqa", size="tiny")
    effzoo.save_pretrained(model, tmp_path / "saved")
    out = tmp_path / "res"
    assert main(["eval", "ppl", "--model", str(tmp_path / "saved"), "--seq-len", "64", "--max-tokens", "128",
                 "--device", "cpu", "--out", str(out), "--quiet"]) == 0
    result = json.loads(out.with_suffix(".json").read_text())
    assert result["tokens"] == 128 and result["data"] == "embedded" and 3 < result["loss"] < 9
    assert "| perplexity |" in out.with_suffix(".md").read_text()
    run = tmp_path / "run"
    effzoo.save_pretrained(model, run / "checkpoints" / "step_00000002")
    effzoo.save_pretrained(model, run / "checkpoints" / "step_00000010")
    (run / "train_config.json").write_text(json.dumps({"data": None}))
    lm = load_language_model(str(run))
    assert lm.name == "step_00000010" and lm.tokenizer.spec == "byte"
    write_mmlu(tmp_path / "mmlu")
    assert main(["eval", "mmlu", "--model", str(run), "--data-dir", str(tmp_path / "mmlu"), "--shots", "1",
                 "--device", "cpu", "--quiet"]) == 0
    assert "| astronomy |" in capsys.readouterr().out
    text = tmp_path / "doc.txt"
    text.write_text("a short document to score\n\n" * 20)
    assert main(["eval", "ppl", "--model", "gqa", "--text", str(text), "--seq-len", "32", "--device", "cpu",
                 "--quiet", "--out", str(tmp_path / "t")]) == 0
    assert json.loads((tmp_path / "t.json").read_text())["tokens"] == ((len(text.read_text()) - 20) // 32) * 32
    shard = tmp_path / "shard.bin"
    np.arange(300, dtype=np.uint16).tofile(shard)
    assert main(["eval", "ppl", "--model", "gqa", "--tokens", str(shard), "--tokenizer", "byte", "--seq-len", "64",
                 "--device", "cpu", "--quiet", "--out", str(tmp_path / "s")]) == 0
    assert json.loads((tmp_path / "s.json").read_text())["tokens"] == 256


def test_transformers_directory(tmp_path):
    transformers = pytest.importorskip("transformers")
    from effzoo.data import train_bpe

    tok = train_bpe(["hello world, the answer is A or B or C or D."] * 20, 300, tmp_path / "hf")
    config = transformers.Qwen2Config(vocab_size=300, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                      num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=256)
    transformers.Qwen2ForCausalLM(config).save_pretrained(tmp_path / "hf")
    lm = load_language_model(str(tmp_path / "hf"))
    assert lm.max_len == 256 and lm.tokenizer.vocab_size == tok.vocab_size
    stats = perplexity(lm, torch.randint(0, tok.vocab_size, (300,)).numpy(), seq_len=64)
    assert math.isfinite(stats["loss"]) and stats["tokens"] == 256
