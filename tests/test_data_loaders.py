"""QA loaders (TOFU files, JSON list, JSON Lines, parquet, `datasets`) and the BPE tokenizer."""

from __future__ import annotations

import json
import statistics
import subprocess
import sys

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from palimpsest.data import (
    DataError,
    QAExample,
    export_tofu,
    generate_world,
    load_hf_qa,
    load_qa_file,
    qa_texts,
    train_bpe_tokenizer,
)

TOFU_RECORDS = [
    {"question": "Who wrote The Silent Harbour?", "answer": "It was written by Ilra Vost.",
     "paraphrased_answer": "Ilra Vost is its author.",
     "perturbed_answer": ["Tam Orlo is its author.", "Vel Sarn is its author.", "Mira Kol is its author."]},
    {"question": "Where was Ilra Vost born?", "answer": "Ilra Vost was born in Korvath.",
     "paraphrased_answer": "Korvath is the birthplace of Ilra Vost.",
     "perturbed_answer": ["Drune is the birthplace of Ilra Vost.", "Sel is the birthplace of Ilra Vost.",
                          "Pask is the birthplace of Ilra Vost."]},
]
TOFU_EXAMPLES = [
    QAExample(question=r["question"], answer=r["answer"], paraphrased_answer=r["paraphrased_answer"],
              perturbed_answers=tuple(r["perturbed_answer"]))
    for r in TOFU_RECORDS
]


@pytest.fixture(scope="module")
def small_world():
    return generate_world(seed=11, num_entities=8)


def write_json_lines(path, records) -> None:
    path.write_text("".join(json.dumps(record) + "\n" for record in records), encoding="utf-8")


# --- export and load -----------------------------------------------------------------


def test_export_tofu_then_load_round_trips_to_equal_examples(tmp_path, small_world):
    path = tmp_path / "world.jsonl"
    export_tofu(small_world.facts, path)
    assert load_qa_file(path) == small_world.facts


def test_export_tofu_writes_tofu_field_names_and_leaves_no_temp_file(tmp_path, small_world):
    path = tmp_path / "forget.json"
    export_tofu(small_world.facts[:3], path)
    first = json.loads(path.read_text(encoding="utf-8").splitlines()[0])
    assert set(first) == {"question", "answer", "paraphrased_answer", "perturbed_answer", "entity", "attribute"}
    assert isinstance(first["perturbed_answer"], list)
    assert [p.name for p in tmp_path.iterdir()] == ["forget.json"]
    assert load_qa_file(path) == small_world.facts[:3]


def test_export_tofu_omits_entity_and_attribute_when_unset(tmp_path):
    path = tmp_path / "plain.jsonl"
    export_tofu(TOFU_EXAMPLES, path)
    assert "entity" not in json.loads(path.read_text(encoding="utf-8").splitlines()[0])
    assert load_qa_file(path) == TOFU_EXAMPLES


def test_export_tofu_replaces_an_existing_file_whole(tmp_path, small_world):
    path = tmp_path / "x.jsonl"
    export_tofu(small_world.facts, path)
    export_tofu(small_world.facts[:2], path)
    assert load_qa_file(path) == small_world.facts[:2]


def test_tofu_json_lines_in_a_json_file_loads(tmp_path):
    path = tmp_path / "forget01.json"  # TOFU's own .json files are JSON Lines
    write_json_lines(path, TOFU_RECORDS)
    assert load_qa_file(path) == TOFU_EXAMPLES


def test_single_record_json_lines_file_loads(tmp_path):
    path = tmp_path / "one.json"
    write_json_lines(path, TOFU_RECORDS[:1])
    assert load_qa_file(path) == TOFU_EXAMPLES[:1]


def test_json_list_file_loads(tmp_path):
    path = tmp_path / "list.json"
    path.write_text(json.dumps(TOFU_RECORDS, indent=2), encoding="utf-8")
    assert load_qa_file(path) == TOFU_EXAMPLES


def test_jsonl_file_with_blank_lines_loads(tmp_path):
    path = tmp_path / "data.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in TOFU_RECORDS) + "\n\n", encoding="utf-8")
    assert load_qa_file(path) == TOFU_EXAMPLES


def test_parquet_file_loads(tmp_path):
    path = tmp_path / "data.parquet"
    pq.write_table(pa.Table.from_pylist(TOFU_RECORDS), path)
    assert load_qa_file(path) == TOFU_EXAMPLES


def test_custom_keys_and_minimal_records_load(tmp_path):
    path = tmp_path / "custom.jsonl"
    write_json_lines(path, [{"prompt": "2+2?", "target": "4"}])
    assert load_qa_file(path, question_key="prompt", answer_key="target") == [QAExample("2+2?", "4")]


def test_missing_file_raises_data_error_naming_it(tmp_path):
    path = tmp_path / "absent.json"
    with pytest.raises(DataError, match="no such file: .*absent.json"):
        load_qa_file(path)


def test_unknown_extension_raises_data_error_listing_allowed(tmp_path):
    path = tmp_path / "data.csv"
    path.write_text("question,answer\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"data\.csv.*\.json, \.jsonl, \.parquet"):
        load_qa_file(path)


@pytest.mark.parametrize("suffix, where", [(".jsonl", "line 2"), (".json", "line 2")])
def test_missing_key_in_json_lines_names_file_line_and_key(tmp_path, suffix, where):
    path = tmp_path / f"bad{suffix}"
    write_json_lines(path, [TOFU_RECORDS[0], {"question": "No answer here?"}])
    with pytest.raises(DataError, match=rf"bad{suffix}: {where}: missing key 'answer'"):
        load_qa_file(path)


def test_missing_key_in_json_list_names_record_number(tmp_path):
    path = tmp_path / "list.json"
    path.write_text(json.dumps([TOFU_RECORDS[0], TOFU_RECORDS[1], {"answer": "x"}]), encoding="utf-8")
    with pytest.raises(DataError, match=r"list\.json: record 3: missing key 'question'"):
        load_qa_file(path)


def test_missing_key_in_parquet_names_record_number(tmp_path):
    path = tmp_path / "data.parquet"
    pq.write_table(pa.Table.from_pylist([{"question": "q?", "reply": "a"}]), path)
    with pytest.raises(DataError, match=r"data\.parquet: record 1: missing key 'answer'"):
        load_qa_file(path)


def test_invalid_json_line_and_wrong_types_raise_data_error(tmp_path):
    broken = tmp_path / "broken.jsonl"
    broken.write_text(json.dumps(TOFU_RECORDS[0]) + "\n{not json\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"broken\.jsonl: line 2: not valid JSON"):
        load_qa_file(broken)
    typed = tmp_path / "typed.jsonl"
    write_json_lines(typed, [{"question": "q?", "answer": "a", "perturbed_answer": [1, 2]}])
    with pytest.raises(DataError, match=r"typed\.jsonl: line 1: 'perturbed_answer' must be a list of strings"):
        load_qa_file(typed)
    scalar = tmp_path / "scalar.json"
    scalar.write_text("42", encoding="utf-8")
    with pytest.raises(DataError, match="expected a JSON list of objects or JSON Lines"):
        load_qa_file(scalar)


def test_corrupt_parquet_raises_data_error(tmp_path):
    path = tmp_path / "corrupt.parquet"
    path.write_bytes(b"not parquet at all")
    with pytest.raises(DataError, match=r"corrupt\.parquet: cannot read as parquet"):
        load_qa_file(path)


def test_data_error_is_a_value_error():
    assert issubclass(DataError, ValueError)


# --- datasets ------------------------------------------------------------------------


def test_load_hf_qa_json_builder_matches_load_qa_file(tmp_path, small_world):
    path = tmp_path / "world.json"
    export_tofu(small_world.facts, path)
    loaded = load_hf_qa("json", data_files=str(path), cache_dir=str(tmp_path / "cache"))
    assert loaded == load_qa_file(path) == small_world.facts


def test_load_hf_qa_reads_tofu_records_with_custom_keys(tmp_path):
    path = tmp_path / "tofu.json"
    write_json_lines(path, TOFU_RECORDS)
    assert load_hf_qa("json", data_files=str(path), cache_dir=str(tmp_path / "cache")) == TOFU_EXAMPLES
    with pytest.raises(DataError, match=r"missing column\(s\) \['query'\]"):
        load_hf_qa("json", data_files=str(path), question_key="query", cache_dir=str(tmp_path / "cache"))


def test_load_hf_qa_unloadable_dataset_raises_data_error(tmp_path):
    with pytest.raises(DataError, match="dataset 'json' split 'train': cannot load"):
        load_hf_qa("json", data_files=str(tmp_path / "absent.json"), cache_dir=str(tmp_path / "cache"))


# --- tokenizer -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def world_tokenizer():
    world = generate_world(seed=0)
    return world, train_bpe_tokenizer(qa_texts(world.facts), vocab_size=1024)


def test_qa_texts_lists_every_string_of_each_example():
    texts = qa_texts(TOFU_EXAMPLES[:1] + [QAExample("q?", "a")])
    assert texts == [TOFU_RECORDS[0]["question"], TOFU_RECORDS[0]["answer"], TOFU_RECORDS[0]["paraphrased_answer"],
                     *TOFU_RECORDS[0]["perturbed_answer"], "q?", "a"]


def test_tokenizer_vocab_is_deterministic_for_the_same_texts(small_world):
    texts = qa_texts(small_world.facts)
    first = train_bpe_tokenizer(texts, vocab_size=400)
    second = train_bpe_tokenizer(texts, vocab_size=400)
    assert first.get_vocab() == second.get_vocab()
    assert first.backend_tokenizer.to_str() == second.backend_tokenizer.to_str()


def test_tokenizer_is_deterministic_across_processes(tmp_path):
    # The Rust trainer's hash maps are seeded per process: compare two fresh processes.
    code = ("import sys; from palimpsest.data import generate_world, qa_texts, train_bpe_tokenizer; "
            "w = generate_world(seed=5, num_entities=30); "
            "sys.stdout.write(train_bpe_tokenizer(qa_texts(w.facts), vocab_size=600).backend_tokenizer.to_str())")
    runs = [subprocess.run([sys.executable, "-c", code], capture_output=True, check=True).stdout for _ in range(2)]
    assert runs[0] == runs[1] and runs[0]


def test_tokenizer_special_tokens_and_ids_are_set(world_tokenizer):
    _, tokenizer = world_tokenizer
    assert len(tokenizer) == 1024
    assert [tokenizer.pad_token, tokenizer.bos_token, tokenizer.eos_token, tokenizer.unk_token] == \
        ["<pad>", "<bos>", "<eos>", "<unk>"]
    ids = [tokenizer.pad_token_id, tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.unk_token_id]
    assert None not in ids and len(set(ids)) == 4


def test_tokenizer_saves_and_reloads_with_auto_tokenizer_identically(tmp_path, small_world):
    from transformers import AutoTokenizer

    texts = qa_texts(small_world.facts)
    tokenizer = train_bpe_tokenizer(texts, vocab_size=400, save_dir=tmp_path / "tok")
    reloaded = AutoTokenizer.from_pretrained(str(tmp_path / "tok"))
    for text in [*texts[:20], "Unseen words ü and 1234!"]:
        assert reloaded.encode(text, add_special_tokens=False) == tokenizer.encode(text, add_special_tokens=False)
    assert reloaded.decode(tokenizer.encode("Where was Ilra born?", add_special_tokens=False)) == "Where was Ilra born?"
    assert (reloaded.pad_token_id, reloaded.eos_token_id, reloaded.bos_token_id) == \
        (tokenizer.pad_token_id, tokenizer.eos_token_id, tokenizer.bos_token_id)


def test_typical_qa_pair_is_under_25_tokens_with_vocab_1024(world_tokenizer):
    world, tokenizer = world_tokenizer
    lengths = [len(tokenizer.encode(f.question, add_special_tokens=False))
               + len(tokenizer.encode(" " + f.answer, add_special_tokens=False)) for f in world.facts]
    assert statistics.median(lengths) < 25
    assert max(lengths) < 30


def test_tokenizer_rejects_too_small_vocab_and_empty_texts():
    with pytest.raises(ValueError, match="vocab_size"):
        train_bpe_tokenizer(["hello"], vocab_size=100)
    with pytest.raises(ValueError, match="no texts"):
        train_bpe_tokenizer([], vocab_size=512)
