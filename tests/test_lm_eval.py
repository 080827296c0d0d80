"""The lm-evaluation-harness adapter, offline: a local task written by the test must give the accuracy
effzoo's own MMLU scorer gives on the same items. Skipped when lm-eval is not installed."""
from __future__ import annotations

import json

import pytest
import torch

import effzoo
from effzoo.eval import evaluate_choices, load_language_model, load_mmlu_dir
from effzoo.eval.lm_eval_model import rolling_windows, score_continuations
from effzoo.eval.mmlu import FORMATS, LETTERS, Question, build_prompt, choice_logliks

pytestmark = pytest.mark.usefixtures("one_thread")

ITEMS = [("Which body is a star?", ("Moon", "Sun", "Mars", "Io"), "B"),
         ("Closest planet to the Sun?", ("Mercury", "Venus", "Earth", "Mars"), "A"),
         ("Red planet?", ("Venus", "Jupiter", "Mars", "Saturn"), "C"),
         ("Largest planet?", ("Earth", "Mars", "Venus", "Jupiter"), "D"),
         ("Ringed planet?", ("Saturn", "Mercury", "Venus", "Mars"), "A"),
         ("Earth's satellite?", ("Phobos", "Titan", "Moon", "Europa"), "C"),
         ("Hottest planet?", ("Mars", "Venus", "Earth", "Neptune"), "B"),
         ("Farthest planet?", ("Earth", "Mars", "Venus", "Neptune"), "D")]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    torch.manual_seed(7)
    path = tmp_path_factory.mktemp("lmeval") / "model"
    effzoo.build("gqa", size="tiny", d_model=64, n_layers=2, n_heads=4, n_kv_heads=2, ffn_hidden=128,
                 dtype="float32").save_pretrained(str(path))
    return path


def test_scores_equal_the_mmlu_scorer(model_dir):
    lm = load_language_model(str(model_dir))
    fmt = FORMATS["mmlu"]
    for question, choices, answer in ITEMS[:3]:
        q = Question(question, choices, answer)
        prompt = lm.tokenizer.encode(build_prompt(fmt, "astronomy", [], q))
        ours = score_continuations(lm, [(prompt, lm.tokenizer.encode(f" {x}")) for x in LETTERS], batch_size=3)
        assert [s for s, _ in ours] == pytest.approx(choice_logliks(lm, fmt, "astronomy", [], q), abs=1e-4)


def test_rolling_windows_predict_every_token_once():
    tokens = list(range(1, 24))
    windows = rolling_windows(tokens, prefix=0, max_len=8)
    assert sum((cont for _, cont in windows), []) == tokens
    for context, cont in windows:
        assert len(context) + len(cont) - 1 <= 8 and context
    assert windows[0] == ([0], tokens[:8]) and windows[1] == ([8], tokens[8:16])
    assert windows[-1] == ([15, 16], tokens[16:])  # the last window keeps a full context of 8 inputs


def _write_task(root, name):
    items = root / "items.jsonl"
    items.write_text("".join(json.dumps({"question": q, "choices": list(c), "answer": LETTERS.index(a)}) + "\n"
                             for q, c, a in ITEMS))
    (root / f"{name}.yaml").write_text(
        f"task: {name}\n"
        "dataset_path: json\n"
        f"dataset_kwargs:\n  data_files:\n    test: {items}\n"
        "test_split: test\n"
        "output_type: multiple_choice\n"
        'description: "The following are multiple choice questions (with answers) about astronomy.\\n\\n"\n'
        'doc_to_text: "{{question.strip()}}\\nA. {{choices[0]}}\\nB. {{choices[1]}}\\nC. {{choices[2]}}'
        '\\nD. {{choices[3]}}\\nAnswer:"\n'
        'doc_to_choice: ["A", "B", "C", "D"]\n'
        "doc_to_target: answer\n"
        "metric_list:\n  - metric: acc\n")
    (root / "mmlu" / "test").mkdir(parents=True)
    (root / "mmlu" / "test" / "astronomy_test.csv").write_text(
        "".join(",".join([q, *c, a]) + "\n" for q, c, a in ITEMS))


def test_local_task_accuracy_equals_effzoo_mmlu(model_dir, tmp_path, monkeypatch):
    pytest.importorskip("lm_eval")
    from effzoo.cli import main

    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "hf-cache"))
    _write_task(tmp_path, "effzoo_local_mc")
    ours = evaluate_choices(load_language_model(str(model_dir)), load_mmlu_dir(tmp_path / "mmlu"), task="mmlu")
    code = main(["eval", "lm-eval", "--model", str(model_dir), "--tasks", "effzoo_local_mc", "--include-path",
                 str(tmp_path), "--batch-size", "4", "--device", "cpu", "--out", str(tmp_path / "lm")])
    assert code == 0
    reported = json.loads((tmp_path / "lm.json").read_text())["results"]["effzoo_local_mc"]
    assert reported["acc,none"] == pytest.approx(ours["accuracy"]) and ours["questions"] == len(ITEMS)


def test_generate_until_and_rolling_through_lm_eval(model_dir):
    pytest.importorskip("lm_eval")
    from lm_eval.api.instance import Instance

    from effzoo.eval.lm_eval_model import register

    adapter = register()(pretrained=str(model_dir), device="cpu", batch_size=2)
    lm = adapter.lm
    prompt = "The sky is"
    ids = torch.tensor([lm.tokenizer.encode(prompt)])
    full = lm.tokenizer.decode(lm.model.generate(ids, 12)[0, ids.shape[1]:].tolist())
    stop = full[3] if len(full) > 3 else "\n"
    req = lambda args: Instance("generate_until", {}, args, 0)  # noqa: E731
    out = adapter.generate_until([req((prompt, {"until": [stop], "max_gen_toks": 12})),
                                  req((prompt, {"until": [], "max_gen_toks": 12}))])
    assert out[1] == full and out[0] == full[:full.find(stop)]
    text = "hello world, a short document."
    rolled = adapter.loglikelihood_rolling([Instance("loglikelihood_rolling", {}, (text,), 0)])[0]
    tokens = lm.tokenizer.encode(text)
    direct = score_continuations(lm, [([lm.tokenizer.eos_id], tokens)])[0][0]
    assert rolled == pytest.approx(direct, abs=1e-4)


def test_missing_lm_eval_is_a_one_line_error(monkeypatch, capsys):
    import sys

    from effzoo.cli import main

    monkeypatch.setitem(sys.modules, "lm_eval", None)  # as if it were not installed
    assert main(["eval", "lm-eval", "--model", "gqa", "--tasks", "anything"]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err == "effzoo eval: error: lm-evaluation-harness is not installed: pip install 'effzoo[eval]' " \
                  "(or pip install lm-eval)"
