"""The question split and the stand-in's shape, on the shipped XQuAD (no Ray, no model)."""

from __future__ import annotations

import random
from collections import Counter, defaultdict

import pyarrow as pa
import pytest

from xqg_ray.config import DatasetConfig
from xqg_ray.datasets import load_corpus
from xqg_ray.datasets.splits import (
    DEV,
    GENERATION,
    TEST,
    group_strata,
    query_groups,
    query_roles,
)
from xqg_ray.models.question_split import QuestionSplitGenerator

LANGUAGES = ["ar", "de", "el", "es", "hi", "ru", "th", "tr", "vi", "zh"]


@pytest.fixture(scope="module")
def corpus(shared_data):
    return load_corpus(DatasetConfig(name="xquad", data_dir=str(shared_data / "xquad")))


@pytest.fixture(scope="module")
def roles(corpus):
    return query_roles(corpus.queries, corpus.qrels, 0.5, 0.2, seed=0)


def _by_paragraph(corpus, roles):
    groups = query_groups(corpus.queries)
    strata = group_strata(groups, corpus.qrels)
    group_role = {groups[qid]: role for qid, role in roles.items()}
    out = defaultdict(Counter)
    for group, stratum in strata.items():
        out[stratum][group_role[group]] += 1
    return out


def test_translations_of_a_question_share_one_role(corpus, roles):
    groups = query_groups(corpus.queries)
    per_group = defaultdict(set)
    for qid, role in roles.items():
        per_group[groups[qid]].add(role)
    assert all(len(r) == 1 for r in per_group.values())
    assert {r for rs in per_group.values() for r in rs} == {GENERATION, DEV, TEST}


def test_every_paragraph_with_two_groups_has_held_in_and_evaluated_ones(corpus, roles):
    paragraphs = _by_paragraph(corpus, roles)
    assert len(paragraphs) == 240
    for counts in paragraphs.values():
        if sum(counts.values()) >= 2:
            assert counts[GENERATION] >= 1 and counts[DEV] + counts[TEST] >= 1, counts


def test_dev_is_about_a_fifth_of_the_evaluated_groups_spread_over_paragraphs(corpus, roles):
    groups = query_groups(corpus.queries)
    group_role = {groups[qid]: role for qid, role in roles.items()}
    counts = Counter(group_role.values())
    evaluated = counts[DEV] + counts[TEST]
    assert abs(counts[DEV] - 0.2 * evaluated) <= 1
    with_dev = sum(1 for c in _by_paragraph(corpus, roles).values() if c[DEV])
    assert with_dev >= counts[DEV] * 0.8  # dev groups are spread, not bunched in few paragraphs


def test_roles_depend_on_ids_and_seed_not_on_row_order(corpus, roles):
    order = list(range(corpus.queries.num_rows))
    random.Random(1).shuffle(order)
    shuffled = corpus.queries.take(pa.array(order))
    assert query_roles(shuffled, corpus.qrels, 0.5, 0.2, seed=0) == roles
    assert query_roles(corpus.queries, corpus.qrels, 0.5, 0.2, seed=1) != roles


def test_no_dev_split_without_a_dev_fraction_and_no_generation_for_a_real_generator(corpus):
    plain = query_roles(corpus.queries, corpus.qrels, None, 0.0, seed=0)
    assert set(plain.values()) == {TEST}


def _english_pids(corpus):
    return [p for p in corpus.passages["pid"].to_pylist() if p.startswith("en-")]


def test_standin_gives_every_passage_exactly_n_per_language(corpus, roles):
    generator = QuestionSplitGenerator(corpus.queries, corpus.qrels, roles, 5, seed=0)
    pids = _english_pids(corpus)
    qrels = zip(corpus.qrels["qid"].to_pylist(), corpus.qrels["pid"].to_pylist(), strict=True)
    held_in = {pid for qid, pid in qrels if roles[qid] == GENERATION}
    for lang in LANGUAGES:
        counts = [len(q) for q in generator.generate_for(pids, lang)]
        for pid, count in zip(pids, counts, strict=True):
            assert count == (5 if pid in held_in else 0), (pid, lang)
    # the only passages without queries are those with no held-in question at all
    assert sum(pid not in held_in for pid in pids) <= 3


def test_standin_draws_only_held_in_questions_of_its_passage_and_language(corpus, roles):
    generator = QuestionSplitGenerator(corpus.queries, corpus.qrels, roles, 5, seed=0)
    texts = dict(
        zip(corpus.queries["qid"].to_pylist(), corpus.queries["text"].to_pylist(), strict=True)
    )
    allowed = defaultdict(set)
    evaluated_texts = set()
    qrels = zip(corpus.qrels["qid"].to_pylist(), corpus.qrels["pid"].to_pylist(), strict=True)
    for qid, pid in qrels:
        if roles[qid] == GENERATION:
            allowed[(pid, qid.split("-", 1)[0])].add(texts[qid])
    for qid, role in roles.items():
        if role != GENERATION:
            evaluated_texts.add(texts[qid])
    pids = _english_pids(corpus)
    for lang in ("de", "th"):
        for pid, queries in zip(pids, generator.generate_for(pids, lang), strict=True):
            assert set(queries) <= allowed[(pid, lang)]
            assert not set(queries) & (evaluated_texts - allowed[(pid, lang)])


def test_standin_draws_are_seeded_by_passage_and_language_not_call_order(corpus, roles):
    generator = QuestionSplitGenerator(corpus.queries, corpus.qrels, roles, 5, seed=0)
    pids = _english_pids(corpus)[:20]
    forward = dict(zip(pids, generator.generate_for(pids, "de"), strict=True))
    backward = dict(zip(pids[::-1], generator.generate_for(pids[::-1], "de"), strict=True))
    assert forward == backward
    other = QuestionSplitGenerator(corpus.queries, corpus.qrels, roles, 5, seed=7)
    assert dict(zip(pids, other.generate_for(pids, "de"), strict=True)) != forward
