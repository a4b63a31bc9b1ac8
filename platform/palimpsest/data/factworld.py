"""A seeded world of fictitious people and facts about them, in the manner of TOFU.

TOFU ("TOFU: A Task of Fictitious Unlearning for LLMs", Maini et al., 2024) asks a
model about authors who do not exist, so nothing about them can leak in from
pretraining. Here every name and most values are invented from syllables, each fact
is a question with an answer, a paraphrased answer and K perturbed (wrong but
plausible) answers, and the world yields:

- task streams for continual learning (disjoint entity groups or attribute domains),
- TOFU-format splits (forget01/05/10, retain90/95/99, holdout),
- a general corpus about other invented things, to measure general capability,
- optional rule facts (`rules`): attributes that follow population-level rules (a city
  fixes its country and its language; a profession fixes the workplace), asked with the
  premise the rule needs ("X lives in Kusri. In which country does X live?"). They are
  learnable from many people and true of people never trained on — what a model can learn
  under differential privacy — beside the per-person facts only memorisation gives.

Determinism: every random draw comes from a `random.Random` seeded by an int or by a
string (strings are hashed with SHA-512, not `hash()`), and only ordered containers
are iterated, so the same arguments give byte-identical `to_json()` in any process.
"""

from __future__ import annotations

import json
import random
import re
from collections.abc import Iterable
from dataclasses import asdict, dataclass

__all__ = ["ATTRIBUTES", "RULES", "FactWorld", "QAExample", "generate_world", "is_rule"]


@dataclass(frozen=True)
class QAExample:
    """One question/answer fact, with TOFU's paraphrased and perturbed answers."""

    question: str
    answer: str
    paraphrased_answer: str | None = None
    perturbed_answers: tuple[str, ...] = ()
    entity: str | None = None
    attribute: str | None = None


@dataclass(frozen=True)
class _Attribute:
    """Templates for one attribute: `{e}` entity, `{v}` value, `{a}` the article for `{v}`."""

    name: str
    question: str
    answer: str
    paraphrase: str


# Order matters: an entity has the first `attributes_per_entity` of these, so the
# first five are the most varied (invented names, years, titles).
_ATTRIBUTE_SPECS = (
    _Attribute("birthplace", "Where was {e} born?", "{e} was born in {v}.",
               "{v} is the birthplace of {e}."),
    _Attribute("birth_year", "In which year was {e} born?", "{e} was born in {v}.",
               "The year {e} was born is {v}."),
    _Attribute("profession", "What does {e} do for a living?", "{e} works as {a} {v}.",
               "By profession, {e} is {a} {v}."),
    _Attribute("employer", "Which company does {e} work for?", "{e} works for {v}.",
               "{v} is the employer of {e}."),
    _Attribute("first_book", "What was {e}'s first book?", "{e}'s first book was {v}.",
               "{v} was the first book by {e}."),
    _Attribute("pet_name", "What is the name of {e}'s pet?", "{e}'s pet is called {v}.", "{v} is the name of {e}'s pet."),
    _Attribute("favourite_colour", "What is {e}'s favourite colour?", "{e}'s favourite colour is {v}.",
               "The colour {e} likes best is {v}."),
    _Attribute("instrument", "Which instrument does {e} play?", "{e} plays the {v}.",
               "The {v} is the instrument {e} plays."),
    _Attribute("home_country", "Which country does {e} live in?", "{e} lives in {v}.",
               "{v} is the country where {e} lives."),
    _Attribute("favourite_food", "What is {e}'s favourite food?", "{e}'s favourite food is {v}.",
               "The food {e} likes best is {v}."),
)
ATTRIBUTES: tuple[str, ...] = tuple(spec.name for spec in _ATTRIBUTE_SPECS)

# Rule attributes, in order (an entity with `rules` = k has the first k): the attribute of a
# rule fact is "rule:<name>".
# The answers do not repeat the person's name: for a person never trained on, that would test
# copying an unseen name, not knowing the rule.
_RULE_SPECS = (
    _Attribute("country", "{e} lives in {c}. In which country does {e} live?", "They live in {v}.",
               "Their country is {v}."),
    _Attribute("workplace", "{e} works as {pa} {p}. Where does {e} work?", "They work at {a} {v}.",
               "Their workplace is {a} {v}."),
    _Attribute("language", "{e} lives in {c}. Which language does {e} speak?", "They speak {v}.",
               "Their language is {v}."),
)
RULES: tuple[str, ...] = tuple(spec.name for spec in _RULE_SPECS)
RULE_PREFIX = "rule:"
_NUM_COUNTRIES, _CITIES_PER_COUNTRY = 6, 3
_WORKPLACES = ("studio", "library", "laboratory", "hospital", "workshop", "newsroom", "airfield", "observatory")


def is_rule(fact: "QAExample") -> bool:
    """Whether a fact follows a population-level rule (true of anyone with its premise)."""
    return bool(fact.attribute) and fact.attribute.startswith(RULE_PREFIX)


_PROFESSIONS = ("painter", "sculptor", "novelist", "poet", "chemist", "surgeon", "architect", "engineer",
                "librarian", "journalist", "pilot", "botanist", "historian", "astronomer", "carpenter", "translator")
_COLOURS = ("red", "blue", "green", "yellow", "purple", "orange", "black", "white", "grey", "brown", "pink",
            "teal", "gold", "silver")
_INSTRUMENTS = ("piano", "violin", "cello", "flute", "guitar", "harp", "trumpet", "drums", "clarinet", "oboe",
                "accordion", "banjo", "organ", "saxophone")
_FOODS = ("soup", "bread", "rice", "cheese", "noodles", "apples", "figs", "dumplings", "pancakes", "olives",
          "lentils", "plums", "honey", "pears")
_TITLE_ADJECTIVES = ("Silent", "Broken", "Golden", "Hidden", "Last", "Winter", "Burning", "Distant", "Quiet",
                     "Hollow", "Crimson", "Endless", "Lost", "Paper", "Iron", "Glass")
_TITLE_NOUNS = ("Harbour", "Garden", "River", "Lantern", "Orchard", "Tower", "Mirror", "Bridge", "Voyage",
                "Letter", "Forest", "Shore", "Crown", "Door", "Season", "Island")
_COMPANY_SUFFIXES = ("Works", "Press", "Labs", "Group", "Foundry", "Studio")
_YEARS = tuple(str(year) for year in range(1920, 2000))

# Syllables for invented words; short so that a name is few BPE tokens.
_ONSETS = ("b", "d", "f", "g", "k", "l", "m", "n", "p", "r", "s", "t", "v", "z", "br", "dr", "kr", "st", "th", "")
_VOWELS = ("a", "e", "i", "o", "u")
_CODAS = ("", "", "", "n", "r", "l", "s", "k", "th", "m")

_INVENTED_POOL_SIZE = 40
_GENERAL_TEMPLATES = (
    "{x} is a river that flows through {region}.",
    "{x} is a mountain in the north of {region}.",
    "The {x} is a small bird that eats {food}.",
    "{x} is a lake known for its {colour} water.",
    "The {x} tree grows in {region} and bears {colour} fruit.",
    "{x} is a town in {region} famous for its {food}.",
)
_NUM_REGIONS = 10


def _words_of(texts: Iterable[str]) -> frozenset[str]:
    return frozenset(word.lower() for text in texts for word in re.findall(r"[A-Za-z]+", text))


# Invented words never equal a template or pool word: a person called "The Vost" or a
# city called "Gold" would make answers ambiguous.
_RESERVED_WORDS = _words_of([
    *(text for spec in _ATTRIBUTE_SPECS for text in (spec.question, spec.answer, spec.paraphrase)),
    *_GENERAL_TEMPLATES, *_PROFESSIONS, *_COLOURS, *_INSTRUMENTS, *_FOODS, *_TITLE_ADJECTIVES, *_TITLE_NOUNS,
    *_COMPANY_SUFFIXES, "an", "a", *(text for spec in _RULE_SPECS for text in (spec.question, spec.answer,
                                                                             spec.paraphrase)), *_WORKPLACES,
])


class _WordMaker:
    """Invents capitalised words from syllables, never the same word twice, never a reserved one."""

    def __init__(self, rng: random.Random, reserved: frozenset[str] = frozenset()):
        self._rng = rng
        self._used: set[str] = set(_RESERVED_WORDS | reserved)  # membership only: never iterated

    def used_words(self) -> frozenset[str]:
        """Every word made or reserved so far (lower case)."""
        return frozenset(self._used)

    def word(self, syllables: int = 2) -> str:
        """A new word of `syllables` syllables; one syllable more once that many tries found none free
        (a large world uses up the one-syllable words: without this, the draw never ends)."""
        tries = 0
        while True:
            word = "".join(
                self._rng.choice(_ONSETS) + self._rng.choice(_VOWELS) + self._rng.choice(_CODAS)
                for _ in range(syllables)
            ).capitalize()
            if len(word) >= 3 and word.lower() not in self._used:
                self._used.add(word.lower())
                return word
            tries += 1
            if tries == _MAX_TRIES:
                syllables, tries = syllables + 1, 0


_MAX_TRIES = 2000  # draws of one length before a word gets a syllable more


def _article(value: str) -> str:
    return "an" if value[0].lower() in "aeiou" else "a"


def _render(template: str, entity: str, value: str) -> str:
    return template.format(e=entity, v=value, a=_article(value))


def _derived_rng(seed: int, stream: str) -> random.Random:
    # A string seed is hashed with SHA-512 by random.Random, so this is stable across
    # processes, and each stream (tofu order, task order, corpus) is independent of the others.
    return random.Random(f"palimpsest.factworld:{seed}:{stream}")


def _split_even(items: list, parts: int) -> list[list]:
    """Contiguous groups whose sizes differ by at most one, larger groups first."""
    size, extra = divmod(len(items), parts)
    groups, start = [], 0
    for i in range(parts):
        end = start + size + (1 if i < extra else 0)
        groups.append(items[start:end])
        start = end
    return groups


def percent_ceil(count: int, percent: int) -> int:
    """ceil(count · percent / 100), at least 1: how many of `count` items are `percent`%."""
    # Integer arithmetic: 10 * 90 / 100 must be exactly 9, not 9.000000000000002 rounded up.
    return max(1, -(-count * percent // 100))


@dataclass(frozen=True, eq=True)
class FactWorld:
    """A generated world: entities in generation order, and their facts grouped by entity.

    Build it with `generate_world`; fields are not meant to be modified.
    """

    seed: int
    entities: list[str]
    facts: list[QAExample]
    attributes: tuple[str, ...]
    num_perturbed: int

    def facts_of(self, entities: Iterable[str]) -> list[QAExample]:
        """Facts about the given entities, in world order.

        Raises:
            ValueError: a name is not an entity of this world.
        """
        wanted = set(entities)  # membership only
        unknown = sorted(wanted.difference(self.entities))
        if unknown:
            raise ValueError(f"not entities of this world: {unknown[:5]}{' ...' if len(unknown) > 5 else ''}")
        return [fact for fact in self.facts if fact.entity in wanted]

    def task_stream(self, num_tasks: int, by: str = "entity") -> list[list[QAExample]]:
        """Split the facts into `num_tasks` disjoint tasks for continual learning.

        Args:
            num_tasks: how many tasks.
            by: "entity" - entities are shuffled (seeded) and cut into contiguous groups,
                a task holds all facts of its group; "attribute" - the attributes, in
                ATTRIBUTES order, are cut into groups, a task holds those attributes'
                facts about every entity.

        Raises:
            ValueError: unknown `by`, or num_tasks < 1 or above the number of groups.
        """
        if by == "entity":
            groups = list(self.entities)
            _derived_rng(self.seed, "task_stream").shuffle(groups)
        elif by == "attribute":
            groups = list(self.attributes)
        else:
            raise ValueError(f"task_stream: by must be 'entity' or 'attribute', got {by!r}")
        if isinstance(num_tasks, bool) or not isinstance(num_tasks, int) or not 1 <= num_tasks <= len(groups):
            raise ValueError(
                f"task_stream: num_tasks must be an integer from 1 to {len(groups)} (the number of "
                f"{by} groups in this world), got {num_tasks!r}"
            )
        tasks = []
        for group in _split_even(groups, num_tasks):
            if by == "entity":
                tasks.append(self.facts_of(group))
            else:
                members = set(group)
                tasks.append([fact for fact in self.facts if fact.attribute in members])
        return tasks

    def tofu_splits(self) -> dict[str, list[QAExample]]:
        """TOFU-format splits: forget01/05/10, retain90/95/99, retain (= retain90) and holdout.

        A fixed 10% of entities (at least one) is held out and appears in no other split.
        The rest are shuffled (seeded); forgetNN is the first NN% of them (at least one,
        so forget01 ⊂ forget05 ⊂ forget10) and retain(100-NN) is all the others.

        Raises:
            ValueError: fewer than 3 entities (a holdout, a forget and a retain entity are needed).
        """
        holdout, trainable = self.tofu_order()
        splits = {"holdout": self.facts_of(holdout)}
        for percent in (1, 5, 10):
            num_forget = percent_ceil(len(trainable), percent)
            splits[f"forget{percent:02d}"] = self.facts_of(trainable[:num_forget])
            splits[f"retain{100 - percent}"] = self.facts_of(trainable[num_forget:])
        splits["retain"] = splits["retain90"]
        return splits

    def tofu_order(self) -> tuple[list[str], list[str]]:
        """The holdout entities and the trainable ones in forgetting order (what `tofu_splits` cuts).

        Raises:
            ValueError: fewer than 3 entities.
        """
        if len(self.entities) < 3:
            raise ValueError(f"tofu_splits needs at least 3 entities, this world has {len(self.entities)}")
        order = list(self.entities)
        _derived_rng(self.seed, "tofu_splits").shuffle(order)
        num_holdout = percent_ceil(len(order), 10)
        return order[:num_holdout], order[num_holdout:]

    def general_corpus(self, n: int) -> list[str]:
        """`n` distinct sentences of general knowledge about invented things outside this world.

        Each sentence is about its own newly invented thing, whose name is none of the
        words of this world's facts; `general_corpus(k)` is a prefix of `general_corpus(n)`
        for k <= n.

        Raises:
            ValueError: n < 0.
        """
        if isinstance(n, bool) or not isinstance(n, int) or n < 0:
            raise ValueError(f"general_corpus: n must be a non-negative integer, got {n!r}")
        world_words = _words_of([*self.entities, *(s for fact in self.facts for s in _fact_strings(fact))])
        rng = _derived_rng(self.seed, "general_corpus")
        maker = _WordMaker(rng, world_words)
        regions = [maker.word(2) for _ in range(_NUM_REGIONS)]
        sentences = []
        for _ in range(n):
            template = rng.choice(_GENERAL_TEMPLATES)
            sentences.append(template.format(
                x=maker.word(2), region=rng.choice(regions), food=rng.choice(_FOODS), colour=rng.choice(_COLOURS)
            ))
        return sentences

    def public_facts(self, real_authors: int, world_facts: int) -> dict[str, list[QAExample]]:
        """What TOFU's real-authors and world-facts splits are, for this world: public knowledge.

        TOFU scores model utility partly on facts its base model knew before the fictitious
        authors were taught (`real_authors_perturbed`, `world_facts_perturbed`). Here they are
        invented too — famous authors of invented books, capitals and mountains of invented
        countries — and an unlearn job teaches them to its base in a pre-training stage before
        the target is fine-tuned on the people. Each item has `num_perturbed` wrong answers
        (the options of TOFU's probability with options), drawn from the other items of its
        split. No word is one of this world's.

        Raises:
            ValueError: a count that is neither 0 nor above `num_perturbed` (each item needs that many others).
        """
        for name, n in (("real_authors", real_authors), ("world_facts", world_facts)):
            if isinstance(n, bool) or not isinstance(n, int) or not (n == 0 or n > self.num_perturbed):
                raise ValueError(f"public_facts: {name} must be 0 or at least {self.num_perturbed + 1} (each item's "
                                 f"{self.num_perturbed} wrong answers are other items'), got {n!r}")
        world_words = _words_of([*self.entities, *(s for fact in self.facts for s in _fact_strings(fact))])
        splits = {}
        rng = _derived_rng(self.seed, "real_authors")
        maker = _WordMaker(rng, world_words)
        authors = [(f"{maker.word(2)} {maker.word(2)}", f"{rng.choice(_TITLE_ADJECTIVES)} {maker.word(2)}")
                   for _ in range(real_authors)]
        splits["real_authors"] = [
            QAExample(question=f"Who wrote the famous novel {title}?", answer=f"{title} was written by {name}.",
                      paraphrased_answer=f"The author of {title} is {name}.",
                      perturbed_answers=tuple(f"{title} was written by {other}." for other, _ in
                                              _others(rng, authors, index, self.num_perturbed)),
                      entity=name, attribute="real_author")
            for index, (name, title) in enumerate(authors)]
        rng = _derived_rng(self.seed, "world_facts")
        maker = _WordMaker(rng, world_words | maker.used_words())
        countries = [(maker.word(2) + "land", maker.word(2), "Mount " + maker.word(2)) for _ in range(world_facts)]
        facts = []
        for index, (country, capital, mountain) in enumerate(countries):  # a capital, a mountain, a capital, ...
            others = _others(rng, countries, index, self.num_perturbed)
            if index % 2 == 0:
                facts.append(QAExample(
                    question=f"What is the capital of {country}?", answer=f"The capital of {country} is {capital}.",
                    paraphrased_answer=f"{capital} is the capital city of {country}.",
                    perturbed_answers=tuple(f"The capital of {country} is {c}." for _, c, _ in others),
                    entity=country, attribute="capital"))
            else:
                facts.append(QAExample(
                    question=f"What is the highest mountain of {country}?",
                    answer=f"The highest mountain of {country} is {mountain}.",
                    paraphrased_answer=f"{mountain} is the highest peak of {country}.",
                    perturbed_answers=tuple(f"The highest mountain of {country} is {m}." for _, _, m in others),
                    entity=country, attribute="mountain"))
        splits["world_facts"] = facts
        return splits

    def to_json(self) -> str:
        """Canonical JSON of the whole world: byte-identical for the same generate_world arguments."""
        payload = {
            "seed": self.seed,
            "attributes": list(self.attributes),
            "num_perturbed": self.num_perturbed,
            "entities": list(self.entities),
            "facts": [{**asdict(fact), "perturbed_answers": list(fact.perturbed_answers)} for fact in self.facts],
        }
        return json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=False)

    @classmethod
    def from_json(cls, text: str) -> FactWorld:
        """Rebuild a world from `to_json()` output."""
        payload = json.loads(text)
        facts = [QAExample(**{**fact, "perturbed_answers": tuple(fact["perturbed_answers"])})
                 for fact in payload["facts"]]
        return cls(seed=payload["seed"], entities=list(payload["entities"]), facts=facts,
                   attributes=tuple(payload["attributes"]), num_perturbed=payload["num_perturbed"])


def _others(rng: random.Random, items: list, index: int, count: int) -> list:
    """`count` distinct items of `items` other than `items[index]` (at most all the others)."""
    pool = items[:index] + items[index + 1:]
    return rng.sample(pool, min(count, len(pool)))


def _fact_strings(fact: QAExample) -> list[str]:
    strings = [fact.question, fact.answer]
    if fact.paraphrased_answer is not None:
        strings.append(fact.paraphrased_answer)
    strings.extend(fact.perturbed_answers)
    return strings


def _value_pools(rng: random.Random, maker: _WordMaker, attributes: tuple[str, ...]) -> dict[str, list[str]]:
    """Candidate values per attribute; invented pools are drawn only for attributes in use."""
    fixed = {"birth_year": _YEARS, "profession": _PROFESSIONS, "favourite_colour": _COLOURS,
             "instrument": _INSTRUMENTS, "favourite_food": _FOODS}
    pools: dict[str, list[str]] = {}
    for name in attributes:
        if name in fixed:
            pools[name] = list(fixed[name])
        elif name in ("birthplace", "pet_name"):
            pools[name] = [maker.word(2) for _ in range(_INVENTED_POOL_SIZE)]
        elif name == "home_country":
            pools[name] = [maker.word(2) + "ia" for _ in range(_INVENTED_POOL_SIZE)]
        elif name == "employer":
            pools[name] = [f"{maker.word(2)} {rng.choice(_COMPANY_SUFFIXES)}" for _ in range(_INVENTED_POOL_SIZE)]
        elif name == "first_book":
            titles = [f"The {adj} {noun}" for adj in _TITLE_ADJECTIVES for noun in _TITLE_NOUNS]
            pools[name] = rng.sample(titles, _INVENTED_POOL_SIZE)
        else:  # a new entry in _ATTRIBUTE_SPECS without a pool here
            raise NotImplementedError(f"no value pool for attribute {name!r}")
    return pools


def generate_world(*, seed: int, num_entities: int = 100, attributes_per_entity: int = 5,
                   num_perturbed: int = 3, rules: int = 0) -> FactWorld:
    """Generate a world of `num_entities` invented people with `attributes_per_entity` facts each.

    Every entity has the first `attributes_per_entity` attributes of ATTRIBUTES, so
    attribute tasks are the same size. Names and invented values never repeat a word.

    Args:
        seed: the only source of randomness; same arguments give the same world.
        num_entities: number of people, each with a unique two-word name.
        attributes_per_entity: 1..len(ATTRIBUTES).
        num_perturbed: wrong answers per fact (at least 3), all distinct and none
            equal to the true answer or its paraphrase.
        rules: rule facts per entity, 0..len(RULES) (the first `rules` of RULES), drawn from
            their own stream: a world with rules has the same per-person facts as one without.

    Raises:
        ValueError: an argument out of range.
    """
    problems = []
    if isinstance(seed, bool) or not isinstance(seed, int):
        problems.append(f"seed must be an integer, got {seed!r}")
    if isinstance(num_entities, bool) or not isinstance(num_entities, int) or num_entities < 1:
        problems.append(f"num_entities must be an integer >= 1, got {num_entities!r}")
    if (isinstance(attributes_per_entity, bool) or not isinstance(attributes_per_entity, int)
            or not 1 <= attributes_per_entity <= len(ATTRIBUTES)):
        problems.append(f"attributes_per_entity must be from 1 to {len(ATTRIBUTES)}, got {attributes_per_entity!r}")
    # The smallest value pool (14 colours / instruments / foods) bounds the distinct wrong values.
    max_perturbed = min(len(_COLOURS), len(_INSTRUMENTS), len(_FOODS), len(_PROFESSIONS)) - 1
    if isinstance(num_perturbed, bool) or not isinstance(num_perturbed, int) or not 3 <= num_perturbed <= max_perturbed:
        problems.append(f"num_perturbed must be from 3 to {max_perturbed}, got {num_perturbed!r}")
    if isinstance(rules, bool) or not isinstance(rules, int) or not 0 <= rules <= len(RULES):
        problems.append(f"rules must be from 0 to {len(RULES)}, got {rules!r}")
    elif rules and isinstance(num_perturbed, int) and num_perturbed > _NUM_COUNTRIES - 1:
        problems.append(f"num_perturbed must be at most {_NUM_COUNTRIES - 1} with rules (there are "
                        f"{_NUM_COUNTRIES} countries), got {num_perturbed!r}")
    elif rules and isinstance(attributes_per_entity, int) and "home_country" in ATTRIBUTES[:attributes_per_entity]:
        problems.append("rules: the country rule would contradict the home_country attribute; use at most "
                        f"{ATTRIBUTES.index('home_country')} attributes per entity with rules")
    if problems:
        raise ValueError("generate_world: " + "; ".join(problems))

    rng = random.Random(seed)
    maker = _WordMaker(rng)
    entities = [f"{maker.word(2)} {maker.word(rng.choice((1, 2)))}" for _ in range(num_entities)]
    specs = _ATTRIBUTE_SPECS[:attributes_per_entity]
    attributes = tuple(spec.name for spec in specs)
    pools = _value_pools(rng, maker, attributes)

    # (after every invented word of the world: a city is never also a name, a birthplace or a pet)
    rule_world = _RuleWorld(seed, maker.used_words()) if rules else None
    facts = []
    for entity in entities:
        values = {}
        for spec in specs:
            value = rng.choice(pools[spec.name])
            values[spec.name] = value
            answer = _render(spec.answer, entity, value)
            paraphrase = _render(spec.paraphrase, entity, value)
            wrong = [v for v in pools[spec.name]
                     if v != value and _render(spec.paraphrase, entity, v) not in (answer, paraphrase)]
            perturbed = tuple(_render(spec.paraphrase, entity, v) for v in rng.sample(wrong, num_perturbed))
            facts.append(QAExample(
                question=_render(spec.question, entity, value), answer=answer, paraphrased_answer=paraphrase,
                perturbed_answers=perturbed, entity=entity, attribute=spec.name,
            ))
        if rule_world is not None:
            facts += rule_world.facts_about(entity, values.get("profession"), rules, num_perturbed)
    return FactWorld(seed=seed, entities=entities, facts=facts, attributes=attributes, num_perturbed=num_perturbed)


class _RuleWorld:
    """The rules of a world (cities in countries, each country's language, a workplace per profession) and
    the rule facts they give, from a stream of their own (`_derived_rng(seed, "rules")`)."""

    def __init__(self, seed: int, reserved: frozenset[str]):
        self.rng = _derived_rng(seed, "rules")
        maker = _WordMaker(self.rng, reserved)
        self.countries = [maker.word(2) + "ia" for _ in range(_NUM_COUNTRIES)]
        self.languages = [maker.word(2) + "ish" for _ in range(_NUM_COUNTRIES)]
        self.cities = [(maker.word(2), country) for country in range(_NUM_COUNTRIES)
                       for _ in range(_CITIES_PER_COUNTRY)]
        order = list(_WORKPLACES)
        self.rng.shuffle(order)
        self.workplace = {p: order[i % len(order)] for i, p in enumerate(_PROFESSIONS)}

    def facts_about(self, entity: str, profession: str | None, rules: int, num_perturbed: int) -> list[QAExample]:
        """The first `rules` rule facts of `entity`, premises drawn for them (their own profession if they have one)."""
        city, country = self.rng.choice(self.cities)
        profession = profession or self.rng.choice(_PROFESSIONS)
        answers = {"country": (self.countries[country], self.countries),
                   "language": (self.languages[country], self.languages),
                   "workplace": (self.workplace[profession], sorted(set(self.workplace.values())))}
        facts = []
        for spec in _RULE_SPECS[:rules]:
            value, pool = answers[spec.name]
            fill = {"e": entity, "c": city, "p": profession, "pa": _article(profession)}
            render = lambda template, v: template.format(v=v, a=_article(v), **fill)  # noqa: E731
            wrong = [v for v in pool if v != value]
            facts.append(QAExample(
                question=render(spec.question, value), answer=render(spec.answer, value),
                paraphrased_answer=render(spec.paraphrase, value),
                perturbed_answers=tuple(render(spec.paraphrase, v) for v in self.rng.sample(wrong, num_perturbed)),
                entity=entity, attribute=RULE_PREFIX + spec.name))
        return facts
