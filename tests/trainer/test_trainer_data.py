"""GSM8K loading (jsonl and parquet), the synthetic task, the prompt stream, padding, the chat template."""

import json

import numpy as np
import pytest

from trainer.data import PromptStream, fitting_problems, gold_answer, left_pad, load_gsm8k, synthetic_arithmetic
from trainer.model.tokenizer import ChatTokenizer


def test_gold_answer():
    assert gold_answer("48/2 = 24\n#### 72") == "72"
    assert gold_answer("#### 1,234") == "1234"
    with pytest.raises(ValueError):
        gold_answer("no marker")


def test_local_jsonl_sample(gsm8k_dir):
    train = load_gsm8k("train", str(gsm8k_dir))
    test = load_gsm8k("test", str(gsm8k_dir))
    first = json.loads((gsm8k_dir / "train.jsonl").read_text().splitlines()[0])
    assert len(train) == 40 and len(test) == 24
    assert train[0].question == first["question"] and train[0].answer == "72"


def test_local_parquet_gives_the_same_problems(gsm8k_dir, tmp_path):
    import datasets

    rows = [json.loads(line) for line in (gsm8k_dir / "test.jsonl").read_text().splitlines()]
    datasets.Dataset.from_list(rows).to_parquet(str(tmp_path / "test-00000-of-00001.parquet"))
    assert load_gsm8k("test", str(tmp_path)) == load_gsm8k("test", str(gsm8k_dir))


def test_missing_split_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="no train"):
        load_gsm8k("train", str(tmp_path))


def test_synthetic_answers_are_the_sums():
    for problem in synthetic_arithmetic("train", 50, 9, seed=3):
        a, b = problem.question.removeprefix("What is ").removesuffix("?").split(" + ")
        assert int(problem.answer) == int(a) + int(b)
    assert synthetic_arithmetic("train", 5, 9, 3) == synthetic_arithmetic("train", 5, 9, 3)
    assert synthetic_arithmetic("train", 5, 9, 3) != synthetic_arithmetic("test", 5, 9, 3)


def test_prompt_stream_epochs_and_resume(gsm8k_dir):
    problems = load_gsm8k("train", str(gsm8k_dir))
    stream = PromptStream(problems, seed=5, shuffle=True)
    first_epoch = stream.next_batch(40)
    assert sorted(p.question for p in first_epoch) == sorted(p.question for p in problems)
    assert first_epoch != problems  # shuffled
    stream.next_batch(7)
    resumed = PromptStream(problems, seed=5, shuffle=True, position=stream.position)
    assert resumed.next_batch(12) == stream.next_batch(12)


def test_left_pad():
    ids, mask = left_pad([[5, 6, 7], [8], []], 4, pad_id=0)
    np.testing.assert_array_equal(ids, [[0, 5, 6, 7], [0, 0, 0, 8], [0, 0, 0, 0]])
    np.testing.assert_array_equal(mask, [[0, 1, 1, 1], [0, 0, 0, 1], [0, 0, 0, 0]])
    with pytest.raises(ValueError, match="does not fit"):
        left_pad([[1, 2, 3]], 2, 0)


def test_chat_template_and_stop_ids(tiny_model_dir):
    tok = ChatTokenizer(tiny_model_dir)
    ids = tok.prompt_ids("What is 1 + 2?", "Be brief.")
    text = tok._tok.decode(ids)
    assert text == ("<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nWhat is 1 + 2?<|im_end|>\n"
                    "<|im_start|>assistant\n")
    assert tok._tok.decode(tok.prompt_ids("Q", "")).startswith("<|im_start|>user\nQ")
    im_end = tok._tok.convert_tokens_to_ids("<|im_end|>")
    assert tok.stop_ids[0] == im_end and tok.pad_id == tok._tok.convert_tokens_to_ids("<|endoftext|>")
    completion = tok.encode("#### 12")
    ids_row = np.array([completion + [im_end, tok.pad_id]])
    mask_row = np.array([[1] * (len(completion) + 1) + [0]])
    assert tok.decode_completions(ids_row, mask_row) == ["#### 12"]


def test_fitting_problems_drops_long_prompts(gsm8k_dir, tiny_model_dir):
    tok = ChatTokenizer(tiny_model_dir)
    problems = load_gsm8k("test", str(gsm8k_dir))
    lengths = [len(tok.prompt_ids(p.question, "")) for p in problems]
    limit = int(np.median(lengths))
    kept, dropped = fitting_problems(problems, lambda q: tok.prompt_ids(q, ""), limit)
    assert dropped == sum(n > limit for n in lengths) > 0
    assert len(kept) + dropped == len(problems)
