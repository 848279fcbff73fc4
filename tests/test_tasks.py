"""Tests for headway.tasks: loading, validation errors, templates and encoding (offline, fast)."""

import json
from pathlib import Path

import pytest
from conftest import make_byte_tokenizer

from headway.data.encoding import encode_examples, render_prompt
from headway.data.rows import Example, TaskError, TaskSpec
from headway.data.tasks import BUILTIN_TASKS, list_builtin_tasks, load_task

GSM8K_TEST = Path(__file__).resolve().parents[2] / "shared/data/gsm8k/test.jsonl"
ROWS = [{"question": f"What is {i} + {i}?", "answer": f"{i} + {i} = {2 * i}"} for i in range(6)]


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


# ------------------------------------------------------------------ built-in / reasoning-gym


@pytest.mark.parametrize("name", sorted(BUILTIN_TASKS))
def test_builtin_tasks_load_and_hash_is_seeded(name):
    task = load_task(name, n=5)
    assert task.name == name and len(task.examples) == 5
    assert [e.index for e in task.examples] == [0, 1, 2, 3, 4]
    assert all(e.prompt.strip() and e.response.strip() for e in task.examples)
    assert task.source == f"reasoning_gym:{BUILTIN_TASKS[name].generator}(seed=0)"
    assert load_task(TaskSpec(source=name, n=5)).data_hash == task.data_hash
    assert load_task(name, n=5, seed=1).data_hash != task.data_hash


def test_builtin_list_and_defaults():
    names = [name for name, _ in list_builtin_tasks()]
    assert {"arithmetic", "chain_sum", "sorting", "syllogism", "leg_counting", "word_problems"} <= set(names)
    assert all(desc for _, desc in list_builtin_tasks())
    task = load_task("rg:basic_arithmetic")
    assert len(task.examples) == 64 and task.spec.n == 64 and task.name == "basic_arithmetic"


def test_generator_offset_gives_disjoint_rows():
    first = load_task("arithmetic", n=5)
    held_out = load_task("arithmetic", n=5, offset=5)
    assert [e.index for e in held_out.examples] == [5, 6, 7, 8, 9]
    assert not {e.prompt for e in first.examples} & {e.prompt for e in held_out.examples}
    # the same rows whatever the generated size
    assert load_task("arithmetic", n=10).examples[5:] == held_out.examples


def test_unknown_generator():
    with pytest.raises(TaskError, match="reasoning_gym has no dataset named 'basic_arithmetik'") as err:
        load_task("rg:basic_arithmetik")
    assert "basic_arithmetic" in str(err.value)  # suggested as a close match


# ------------------------------------------------------------------ files and folders


def test_file_formats_load(tmp_path):
    import pandas as pd

    paths = [write_jsonl(tmp_path / "a.jsonl", ROWS), tmp_path / "b.json", tmp_path / "c.csv", tmp_path / "d.parquet"]
    paths[1].write_text(json.dumps(ROWS))
    pd.DataFrame(ROWS).to_csv(paths[2], index=False)
    pd.DataFrame(ROWS).to_parquet(paths[3])
    hashes = set()
    for path in paths:
        task = load_task(str(path))
        assert [(e.prompt, e.response, e.index) for e in task.examples] == [
            (r["question"], r["answer"], i) for i, r in enumerate(ROWS)]
        assert task.source == str(path.resolve()) and task.name == path.stem
        hashes.add(task.data_hash)
    assert len(hashes) == 1


def test_csv_cells_are_verbatim_text(tmp_path):
    path = tmp_path / "nums.csv"
    path.write_text("prompt,response\n1+6,007\nsay none,None\n")
    task = load_task(str(path))
    assert [e.response for e in task.examples] == ["007", "None"]


def test_offset_n_shuffle_and_explicit_fields(tmp_path):
    rows = [{"q": f"q{i}", "a": f"a{i}", "prompt": f"p{i}"} for i in range(10)]
    path = write_jsonl(tmp_path / "rows.jsonl", rows)
    task = load_task(str(path), prompt_field="q", response_field="a", offset=3, n=4)
    assert [(e.prompt, e.response, e.index) for e in task.examples] == [(f"q{i}", f"a{i}", i) for i in range(3, 7)]
    shuffled = load_task(str(path), prompt_field="q", response_field="a", shuffle=True, seed=3, n=5)
    rest = load_task(str(path), prompt_field="q", response_field="a", shuffle=True, seed=3, offset=5)
    indices = [e.index for e in shuffled.examples + rest.examples]
    assert sorted(indices) == list(range(10)) and indices != list(range(10))
    assert all(e.prompt == f"q{e.index}" for e in shuffled.examples)


def test_local_folder_loads(tmp_path):
    folder = tmp_path / "mydata"
    folder.mkdir()
    write_jsonl(folder / "train.jsonl", ROWS[:4])
    write_jsonl(folder / "test.jsonl", ROWS[4:])
    task = load_task(str(folder), split="test")
    assert task.name == "mydata" and [e.prompt for e in task.examples] == [r["question"] for r in ROWS[4:]]


def test_gsm8k_file_needs_no_options(tmp_path):
    """A file in GSM8K's layout (question, answer with its chain of thought and '#### N'),
    named test.jsonl in a gsm8k folder: no options needed. The rows are made up here; the
    shared copy of GSM8K, where this machine has it, is read the same way."""
    folder = tmp_path / "gsm8k"
    folder.mkdir()
    rows = [{"question": f"Tom has {i} apples and buys {i + 2} more. How many has he?",
             "answer": f"He has {i} + {i + 2} = <<{i}+{i + 2}={2 * i + 2}>>{2 * i + 2} apples."
                       f"\n#### {2 * i + 2}"} for i in range(10)]
    write_jsonl(folder / "test.jsonl", rows)
    for path in [folder / "test.jsonl", *([GSM8K_TEST] if GSM8K_TEST.exists() else [])]:
        task = load_task(str(path), n=8)
        assert len(task.examples) == 8 and task.name == "gsm8k-test"
        first = json.loads(path.open().readline())
        assert task.examples[0].prompt == first["question"]
        assert task.examples[0].response == first["answer"]
        assert "\n#### " in task.examples[0].response  # whole chain of thought, verbatim


# ------------------------------------------------------------------ errors


def test_missing_file():
    with pytest.raises(TaskError, match="no_such_file.jsonl: no such file"):
        load_task("/tmp/definitely/no_such_file.jsonl")


def test_malformed_jsonl_names_file_and_row(tmp_path):
    path = tmp_path / "broken.jsonl"
    path.write_text('{"question": "a", "answer": "b"}\n\n{"question": oops}\n')
    with pytest.raises(TaskError) as err:
        load_task(str(path))
    assert "broken.jsonl" in str(err.value) and "row 1 (line 3)" in str(err.value)


def test_unparseable_parquet(tmp_path):
    path = tmp_path / "garbage.parquet"
    path.write_bytes(b"not parquet at all")
    with pytest.raises(TaskError, match="garbage.parquet: cannot read as parquet"):
        load_task(str(path))


def test_unsupported_extension(tmp_path):
    path = tmp_path / "data.txt"
    path.write_text("hello")
    with pytest.raises(TaskError, match="data.txt: unsupported file type"):
        load_task(str(path))


def test_no_prompt_column_lists_columns_and_candidates(tmp_path):
    path = write_jsonl(tmp_path / "odd.jsonl", [{"text": "x", "answer": "y"}])
    with pytest.raises(TaskError) as err:
        load_task(str(path))
    msg = str(err.value)
    assert all(s in msg for s in ("odd.jsonl", "no prompt column", "'text'", "'question'", "prompt_field"))


def test_named_field_missing(tmp_path):
    path = write_jsonl(tmp_path / "rows.jsonl", ROWS)
    with pytest.raises(TaskError, match=r"rows.jsonl.*response_field 'solution' is not a column"):
        load_task(str(path), response_field="solution")


@pytest.mark.parametrize("bad, problem", [
    ({"question": "q"}, "missing or null"),
    ({"question": "q", "answer": None}, "missing or null"),
    ({"question": "q", "answer": "   \n"}, "empty"),
])
def test_bad_row_names_file_row_and_field(tmp_path, bad, problem):
    path = write_jsonl(tmp_path / "bad_rows.jsonl", ROWS[:2] + [bad])
    with pytest.raises(TaskError) as err:
        load_task(str(path))
    assert str(err.value) == f"{path.resolve()}: row 2: field 'answer' is {problem}"


def test_non_string_value(tmp_path):
    path = write_jsonl(tmp_path / "ints.jsonl", [{"question": "1+1", "answer": 2}])
    with pytest.raises(TaskError, match=r"ints.jsonl: row 0: field 'answer' is not a string"):
        load_task(str(path))


def test_n_larger_than_available(tmp_path):
    path = write_jsonl(tmp_path / "small.jsonl", ROWS)
    with pytest.raises(TaskError, match=r"small.jsonl.*n=5.*offset=3.*has 6 rows \(3 after the offset\)"):
        load_task(str(path), n=5, offset=3)


def test_unknown_hub_dataset_offline():
    with pytest.raises(TaskError) as err:
        load_task("no-such-user/no-such-dataset")
    msg = str(err.value)
    assert "no-such-user/no-such-dataset" in msg and "hub" in msg and "HF_DATASETS_OFFLINE" in msg


def test_unknown_override():
    with pytest.raises(TaskError, match="unknown TaskSpec field"):
        load_task("arithmetic", rows=3)


# ------------------------------------------------------------------ templates and encoding


def test_render_prompt_templates(byte_tokenizer):
    assert render_prompt("2+2?", "qa", byte_tokenizer) == "Question: 2+2?\nAnswer: "
    assert render_prompt("2+2?", "raw", byte_tokenizer) == "2+2?"
    assert render_prompt("{x}", "Q: {prompt} A:", byte_tokenizer) == "Q: {x} A:"
    with pytest.raises(TaskError, match="unknown template 'qq'.*'qa', 'raw', 'chat'"):
        render_prompt("2+2?", "qq", byte_tokenizer)
    with pytest.raises(TaskError, match="has no chat template"):
        render_prompt("2+2?", "chat", byte_tokenizer)


@pytest.mark.parametrize("add_bos", [False, True])
def test_encode_labels_mask_prompt_exactly(add_bos):
    tok = make_byte_tokenizer(add_bos=add_bos)
    examples = [Example("What is 2+2?", "2+2 = 4", 7), Example("Sort: b a", "a, b", 9)]
    encoded, stats = encode_examples(examples, tok)
    for example, enc in zip(examples, encoded):
        prompt_ids = tok(render_prompt(example.prompt, "qa", tok))["input_ids"]
        n_prompt = len(prompt_ids)
        assert enc.input_ids[:n_prompt] == prompt_ids and enc.index == example.index and not enc.truncated
        assert enc.labels[:n_prompt] == [-100] * n_prompt
        assert -100 not in enc.labels[n_prompt:] and enc.labels[n_prompt:] == enc.input_ids[n_prompt:]
        assert enc.labels[-1] == tok.eos_token_id
        assert tok.decode(enc.input_ids[n_prompt:-1]) == example.response
        assert (enc.input_ids[0] == tok.bos_token_id) == add_bos
        assert tok.bos_token_id not in enc.input_ids[n_prompt:]
    assert (stats.n_in, stats.n_out, stats.n_truncated, stats.n_dropped) == (2, 2, 0, 0)
    assert stats.n_tokens == sum(len(e.input_ids) for e in encoded)
    assert stats.n_response_tokens == len("2+2 = 4") + len("a, b") + 2


def test_encode_truncate_and_drop(byte_tokenizer):
    prompt_len = len("Question: q\nAnswer: ")
    examples = [Example("q", "short", 0), Example("q", "a much longer response", 1)]
    max_length = prompt_len + 10
    encoded, stats = encode_examples(examples, byte_tokenizer, max_length=max_length)
    assert [e.truncated for e in encoded] == [False, True] and len(encoded[1].input_ids) == max_length
    assert sum(l != -100 for l in encoded[1].labels) == 10
    assert (stats.n_out, stats.n_truncated, stats.n_dropped) == (2, 1, 0)
    assert stats.n_response_tokens == 6 + 10

    encoded, stats = encode_examples(examples, byte_tokenizer, max_length=max_length, overlong="drop")
    assert [e.index for e in encoded] == [0]
    assert (stats.n_in, stats.n_out, stats.n_truncated, stats.n_dropped) == (2, 1, 0, 1)
    assert stats.n_tokens == prompt_len + 6

    with pytest.raises(TaskError, match="unknown overlong policy 'cut'"):
        encode_examples(examples, byte_tokenizer, overlong="cut")


def test_encode_prompt_fills_max_length(byte_tokenizer):
    examples = [Example("a long question", "yes", 4)]
    with pytest.raises(TaskError) as err:
        encode_examples(examples, byte_tokenizer, max_length=10, source="my.jsonl")
    msg = str(err.value)
    n_prompt = len(render_prompt("a long question", "qa", byte_tokenizer))  # one token per byte
    assert "my.jsonl: row 4: the prompt alone" in msg and f"prompt alone has {n_prompt} tokens" in msg


def test_encode_chat_template():
    tok = make_byte_tokenizer(add_bos=True)
    with pytest.raises(TaskError, match="no chat template"):
        encode_examples([Example("hi", "yo", 0)], tok, template="chat")
    tok.chat_template = ("{{ bos_token }}{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}\n{% endfor %}"
                         "{% if add_generation_prompt %}<assistant>{% endif %}")
    (enc,), _ = encode_examples([Example("hi", "yo", 0)], tok, template="chat")
    n_prompt = enc.labels.count(-100)
    assert tok.decode(enc.input_ids[:n_prompt]) == "<s><user>hi\n<assistant>"  # one BOS, from the template
    assert tok.decode(enc.input_ids[n_prompt:]) == "yo</s>"


def test_encode_needs_eos(byte_tokenizer):
    byte_tokenizer.eos_token = None
    with pytest.raises(TaskError, match="no eos_token_id"):
        encode_examples([Example("q", "a", 0)], byte_tokenizer)
