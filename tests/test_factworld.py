"""The fact world: determinism, fact integrity, TOFU splits, task streams, general corpus."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from palimpsest.data import ATTRIBUTES, FactWorld, QAExample, generate_world

FORGET_LEVELS = (("forget01", "retain99"), ("forget05", "retain95"), ("forget10", "retain90"))


@pytest.fixture(scope="module")
def world() -> FactWorld:
    return generate_world(seed=7)


def entities_in(examples: list[QAExample]) -> set[str]:
    return {example.entity for example in examples}


def test_same_seed_gives_byte_identical_json():
    assert generate_world(seed=3).to_json() == generate_world(seed=3).to_json()
    assert FactWorld.from_json(generate_world(seed=3).to_json()) == generate_world(seed=3)


def test_same_seed_gives_byte_identical_json_in_fresh_processes_with_other_hash_seeds():
    code = "import sys; from palimpsest.data import generate_world; sys.stdout.write(generate_world(seed=3).to_json())"
    outputs = []
    for hash_seed in ("1", "2"):
        env = {**os.environ, "PYTHONHASHSEED": hash_seed}
        done = subprocess.run([sys.executable, "-c", code], capture_output=True, env=env, check=True)
        outputs.append(done.stdout)
    assert outputs[0] == outputs[1] == generate_world(seed=3).to_json().encode("utf-8")


def test_different_seeds_give_different_worlds():
    assert generate_world(seed=1).to_json() != generate_world(seed=2).to_json()
    assert generate_world(seed=1).entities != generate_world(seed=2).entities


def test_to_json_is_canonical_sorted_and_compact(world):
    text = world.to_json()
    assert ", " not in text.split('"facts"')[0] and '": ' not in text[:200]
    assert text.startswith('{"attributes":')


def test_world_has_requested_shape_and_unique_two_word_names(world):
    assert len(world.entities) == 100
    assert len(set(world.entities)) == 100
    assert all(len(name.split()) == 2 for name in world.entities)
    assert len(world.facts) == 100 * 5
    assert world.attributes == ATTRIBUTES[:5]
    assert len(ATTRIBUTES) >= 8


def test_facts_are_grouped_by_entity_in_entity_order(world):
    order = [fact.entity for fact in world.facts]
    assert [order[i] for i in range(0, len(order), 5)] == world.entities
    assert all(order[i] == order[i - i % 5] for i in range(len(order)))


def test_every_fact_mentions_its_entity_and_paraphrase_differs_from_answer(world):
    for fact in world.facts:
        assert fact.entity in fact.question and fact.entity in fact.answer
        assert fact.paraphrased_answer is not None and fact.entity in fact.paraphrased_answer
        assert fact.paraphrased_answer != fact.answer


def test_perturbed_answers_are_distinct_wrong_and_at_least_three(world):
    for fact in world.facts:
        assert len(fact.perturbed_answers) == 3
        assert len(set(fact.perturbed_answers)) == len(fact.perturbed_answers)
        assert fact.answer not in fact.perturbed_answers
        assert fact.paraphrased_answer not in fact.perturbed_answers


def test_perturbed_answers_differ_from_the_paraphrase_only_in_the_value(world):
    for fact in world.facts:
        true_words = fact.paraphrased_answer.split()
        for wrong in fact.perturbed_answers:
            words = wrong.split()
            prefix = next(i for i, (a, b) in enumerate(zip(words + [None], true_words + [""])) if a != b)
            suffix = next(i for i, (a, b) in enumerate(zip(words[::-1] + [None], true_words[::-1] + [""])) if a != b)
            shared = " ".join(words[:prefix] + ["|"] + words[len(words) - suffix:])
            assert fact.entity in shared  # the entity is in the common template, the value is what changed


def test_more_perturbed_answers_when_asked():
    world = generate_world(seed=1, num_entities=10, attributes_per_entity=len(ATTRIBUTES), num_perturbed=6)
    assert all(len(set(fact.perturbed_answers)) == 6 for fact in world.facts)
    assert {fact.attribute for fact in world.facts} == set(ATTRIBUTES)


@pytest.mark.parametrize("kwargs", [
    {"num_entities": 0},
    {"attributes_per_entity": 0},
    {"attributes_per_entity": len(ATTRIBUTES) + 1},
    {"num_perturbed": 2},
    {"num_perturbed": 100},
])
def test_generate_world_rejects_out_of_range_arguments(kwargs):
    with pytest.raises(ValueError, match="generate_world"):
        generate_world(seed=0, **kwargs)


def test_qa_pairs_are_short(world):
    assert max(len(fact.question.split()) + len(fact.answer.split()) for fact in world.facts) <= 20


# --- TOFU splits ---------------------------------------------------------------------


def test_tofu_splits_have_all_keys_and_retain_is_retain90(world):
    splits = world.tofu_splits()
    assert set(splits) == {"forget01", "forget05", "forget10", "retain90", "retain95", "retain99", "retain", "holdout"}
    assert splits["retain"] == splits["retain90"]


@pytest.mark.parametrize("forget, retain", FORGET_LEVELS)
def test_forget_retain_and_holdout_share_no_entity(world, forget, retain):
    splits = world.tofu_splits()
    forget_entities, retain_entities = entities_in(splits[forget]), entities_in(splits[retain])
    holdout_entities = entities_in(splits["holdout"])
    assert not forget_entities & retain_entities
    assert not forget_entities & holdout_entities
    assert not retain_entities & holdout_entities
    assert forget_entities | retain_entities | holdout_entities == set(world.entities)


def test_forget_sets_are_nested_non_empty_and_sized_by_percent(world):
    splits = world.tofu_splits()
    f01, f05, f10 = (entities_in(splits[k]) for k in ("forget01", "forget05", "forget10"))
    assert f01 and f01 < f05 < f10
    holdout = entities_in(splits["holdout"])
    assert len(holdout) == 10
    # Percentages of the 90 trainable entities, rounded up.
    assert (len(f01), len(f05), len(f10)) == (1, 5, 9)
    assert all(len(splits[k]) == 5 * n for k, n in (("forget01", 1), ("forget05", 5), ("forget10", 9)))


def test_tofu_splits_are_deterministic_and_depend_on_seed():
    assert generate_world(seed=4).tofu_splits() == generate_world(seed=4).tofu_splits()
    first = entities_in(generate_world(seed=4).tofu_splits()["forget10"])
    other = entities_in(generate_world(seed=5).tofu_splits()["forget10"])
    assert first != other


def test_tofu_splits_need_three_entities():
    with pytest.raises(ValueError, match="at least 3 entities"):
        generate_world(seed=0, num_entities=2).tofu_splits()


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 10_000), num_entities=st.integers(3, 60))
def test_tofu_split_invariants_hold_for_any_small_world(seed, num_entities):
    world = generate_world(seed=seed, num_entities=num_entities, attributes_per_entity=1)
    splits = world.tofu_splits()
    holdout = entities_in(splits["holdout"])
    assert holdout and len(holdout) == -(-num_entities // 10)
    previous: set[str] = set()
    for forget, retain in FORGET_LEVELS:
        f, r = entities_in(splits[forget]), entities_in(splits[retain])
        assert f and r and previous <= f
        assert not (f & r) and not (f & holdout) and not (r & holdout)
        assert len(f) + len(r) + len(holdout) == num_entities
        previous = f


# --- task streams --------------------------------------------------------------------


@pytest.mark.parametrize("num_tasks", [1, 3, 7, 100])
def test_entity_tasks_are_disjoint_and_cover_all_facts(world, num_tasks):
    tasks = world.task_stream(num_tasks)
    assert len(tasks) == num_tasks and all(tasks)
    seen = [entities_in(task) for task in tasks]
    for i in range(num_tasks):
        for j in range(i + 1, num_tasks):
            assert not seen[i] & seen[j]
    flat = [fact for task in tasks for fact in task]
    assert sorted(flat, key=world.facts.index) == world.facts
    sizes = [len(group) for group in seen]
    assert max(sizes) - min(sizes) <= 1


def test_attribute_tasks_are_disjoint_and_hold_every_entity(world):
    tasks = world.task_stream(2, by="attribute")
    attributes = [{fact.attribute for fact in task} for task in tasks]
    assert not attributes[0] & attributes[1]
    assert attributes[0] | attributes[1] == set(world.attributes)
    assert all(entities_in(task) == set(world.entities) for task in tasks)
    assert sum(len(task) for task in tasks) == len(world.facts)


def test_task_stream_is_deterministic(world):
    assert world.task_stream(4) == generate_world(seed=7).task_stream(4)


@pytest.mark.parametrize("num_tasks, by", [(0, "entity"), (-1, "entity"), (101, "entity"), (6, "attribute"),
                                           (0, "attribute")])
def test_task_stream_rejects_bad_num_tasks(world, num_tasks, by):
    with pytest.raises(ValueError, match="num_tasks must be an integer from 1 to"):
        world.task_stream(num_tasks, by=by)


def test_task_stream_rejects_unknown_grouping(world):
    with pytest.raises(ValueError, match="'entity' or 'attribute'"):
        world.task_stream(2, by="colour")


def test_facts_of_returns_world_order_and_rejects_unknown_names(world):
    picked = [world.entities[5], world.entities[2]]
    assert [f.entity for f in world.facts_of(picked)] == [world.entities[2]] * 5 + [world.entities[5]] * 5
    with pytest.raises(ValueError, match="not entities of this world"):
        world.facts_of(["Nobody Atall"])


# --- general corpus ------------------------------------------------------------------


def test_general_corpus_mentions_no_world_entity(world):
    corpus = world.general_corpus(500)
    name_words = {word for name in world.entities for word in name.split()}
    for sentence in corpus:
        assert not any(name in sentence for name in world.entities)
        assert not name_words & set(re.findall(r"[A-Za-z]+", sentence))


def test_general_corpus_is_deterministic_distinct_and_prefix_stable(world):
    corpus = world.general_corpus(200)
    assert len(corpus) == 200 and len(set(corpus)) == 200
    assert corpus == generate_world(seed=7).general_corpus(200)
    assert world.general_corpus(20) == corpus[:20]
    assert world.general_corpus(0) == []
    assert corpus != generate_world(seed=8).general_corpus(200)


def test_general_corpus_rejects_negative_size(world):
    with pytest.raises(ValueError, match="non-negative"):
        world.general_corpus(-1)


def test_rule_facts_follow_population_rules_and_leave_the_per_person_facts_unchanged():
    """A city fixes its country and language, a profession its workplace; the question carries the premise,
    never the answer; the same seed without rules gives exactly the per-person facts."""
    from palimpsest.data.factworld import RULES, is_rule

    world = generate_world(seed=4, num_entities=120, attributes_per_entity=3, rules=3)
    plain = generate_world(seed=4, num_entities=120, attributes_per_entity=3)
    assert [f for f in world.facts if not is_rule(f)] == plain.facts
    rules = [f for f in world.facts if is_rule(f)]
    assert len(rules) == 120 * 3 and {f.attribute for f in rules} == {f"rule:{r}" for r in RULES}
    premise_of = {"rule:country": r"lives in (\w+)\.", "rule:language": r"lives in (\w+)\.",
                  "rule:workplace": r"works as an? (\w+)\."}
    answer_of = {"rule:country": r"live in (\w+)\.$", "rule:language": r"speak (\w+)\.$",
                 "rule:workplace": r"work at an? (\w+)\.$"}
    for attribute in premise_of:
        mapping = {}
        for fact in (f for f in rules if f.attribute == attribute):
            premise = re.search(premise_of[attribute], fact.question).group(1)
            answer = re.search(answer_of[attribute], fact.answer).group(1)
            assert mapping.setdefault(premise, answer) == answer, f"{attribute}: {premise} maps to two answers"
            assert answer not in fact.question  # the answer must come from the rule, not from the question
            assert len(set(fact.perturbed_answers)) == 3 and all(answer not in p for p in fact.perturbed_answers)
        assert len(set(mapping.values())) >= 4  # a rule with several outcomes, not a constant
        assert len(mapping) > len(set(mapping.values()))  # many premises share an outcome: a rule to learn
    professions = {f.entity: re.search(r"works as an? (\w+)\.", f.answer).group(1)
                   for f in world.facts if f.attribute == "profession"}
    for fact in (f for f in rules if f.attribute == "rule:workplace"):  # consistent with the person's own facts
        assert re.search(premise_of["rule:workplace"], fact.question).group(1) == professions[fact.entity]
    with pytest.raises(ValueError, match="rules"):
        generate_world(seed=4, num_entities=3, rules=4)


def test_a_continual_stream_with_rules_keeps_people_apart_for_rule_accuracy():
    """Tasks train on rule and individual facts of their people; task eval sets score the individual facts;
    rule_accuracy's set holds rule facts of people in no task."""
    from palimpsest.data.factworld import is_rule
    from palimpsest.runners.continual import load_stream
    from palimpsest.spec import parse_spec

    spec = parse_spec({"kind": "continual", "name": "r", "seed": 3, "methods": ["naive"],
                       "stream": {"source": "factworld", "num_entities": 30, "attributes_per_entity": 2,
                                  "num_tasks": 3, "rules": 2}})
    stream = load_stream(spec)
    trained = {f.entity for task in stream.train for f in task}
    assert len(trained) == 30 and all(any(is_rule(f) for f in task) for task in stream.train)
    assert not any(is_rule(f) for task in stream.evaluation for f in task)
    assert len(stream.rules_eval) == 3 * 2 and all(is_rule(f) for f in stream.rules_eval)
    assert not {f.entity for f in stream.rules_eval} & trained
    plain = load_stream(parse_spec({**spec.model_dump(mode="json"),
                                    "stream": {**spec.stream.model_dump(), "rules": 0}}))
    assert plain.rules_eval == [] and plain.evaluation == plain.train


def test_a_large_world_is_generated_although_the_one_syllable_words_run_out():
    """Half the second names have one syllable; a few thousand people use them all up (the draw once never ended)."""
    world = generate_world(seed=1, num_entities=2500, attributes_per_entity=1)
    assert len(set(world.entities)) == 2500


# --- public facts (TOFU's real authors and world facts) -------------------------------


def test_public_facts_are_outside_the_world_with_three_wrong_options_from_their_split(world):
    public = world.public_facts(10, 9)
    assert [len(public["real_authors"]), len(public["world_facts"])] == [10, 9]
    world_words = {w.lower() for fact in world.facts for s in (fact.question, fact.answer, *fact.perturbed_answers)
                   for w in re.findall(r"[A-Za-z]+", s) if w[0].isupper()}
    for split, items in public.items():
        answers = {item.answer for item in items}
        for item in items:
            assert len(set(item.perturbed_answers)) == 3 and item.answer not in item.perturbed_answers
            assert item.paraphrased_answer and item.paraphrased_answer != item.answer
            assert item.entity in item.answer and (split == "real_authors") != (item.entity in item.question)
            value = re.findall(r"[A-Za-z]+", item.answer)[-1]  # the author's surname, the capital, the mountain
            names = {w.lower() for w in (*item.entity.split(), value)}
            assert not names & world_words, (split, item)
        if split == "real_authors":  # the wrong authors are the other authors of the split
            authors = {a.rsplit(" by ", 1)[1] for a in answers}
            assert all(p.rsplit(" by ", 1)[1] in authors for item in items for p in item.perturbed_answers)
    assert {item.attribute for item in public["world_facts"]} == {"capital", "mountain"}
    assert world.public_facts(10, 9) == public  # deterministic
    assert generate_world(seed=8).public_facts(10, 9) != public
    assert world.public_facts(0, 0) == {"real_authors": [], "world_facts": []}


@pytest.mark.parametrize("counts", [(1, 0), (0, 3), (-1, 5)])
def test_public_facts_need_enough_items_for_their_options(world, counts):
    with pytest.raises(ValueError, match="0 or at least 4"):
        world.public_facts(*counts)
