"""Retrieval metrics: ir_measures measures, XTREME-R mAP@k, XOR-Retrieve R@kt, paired t-test.

Every function is pure (no I/O, no Ray) so that it runs on the driver after search and in tests.

Shapes used throughout:

- run: a ``pa.Table`` with string columns ``qid``, ``pid`` and an integer ``rank`` and/or a
  float ``score`` column, or a list of ``(qid, pid, score, rank)`` tuples. The order of a query's
  passages is ``rank`` ascending when there is a ``rank`` column (ranks must be unique within a
  query; only their order matters), otherwise ``score`` descending with ties broken by ``pid``.
  A passage may appear at most once per query (merge multi-vector hits to passages first).
- qrels: a ``pa.Table`` with the ``schema.QRELS`` columns ``qid``, ``pid``, ``relevance``;
  ``relevance > 0`` means relevant.
- per-query results: ``dict[qid, dict[measure, float]]`` (several measures) or
  ``dict[qid, float]`` (one measure).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from statistics import fmean

import ir_measures
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from nltk.tokenize import NLTKWordTokenizer
from scipy import stats

from xqg_ray.errors import ConfigError, InputError

Run = pa.Table | Sequence[tuple[str, str, float, int]]

_KEY_SEPARATOR = "\x1f"
_XTREME_MAP = re.compile(r"mAP@(\d+)")
_YES_NO = ("yes", "no")
_word_tokenizer = NLTKWordTokenizer()


# --- run and qrels tables ------------------------------------------------------------------


def _as_table(run: Run) -> pa.Table:
    if isinstance(run, pa.Table):
        return run
    rows = list(run)
    bad = next((i for i, row in enumerate(rows) if len(row) != 4), None)
    if bad is not None:
        raise InputError(f"run row {bad}: expected (qid, pid, score, rank), got {rows[bad]!r}")
    qids, pids, scores, ranks = zip(*rows, strict=True) if rows else ((), (), (), ())
    return pa.table(
        {
            "qid": pa.array(qids, pa.string()),
            "pid": pa.array(pids, pa.string()),
            "score": pa.array(scores, pa.float64()),
            "rank": pa.array(ranks, pa.int64()),
        }
    )


def _require_columns(table: pa.Table, what: str, columns: Iterable[str]) -> None:
    for column in columns:
        if column not in table.column_names:
            raise InputError(f"{what}: missing column {column!r} (has {table.column_names})")
        if table.column(column).null_count:
            raise InputError(f"{what}: column {column!r} has null values")


def _ids_and(field: pa.Field) -> pa.Schema:
    return pa.schema([("qid", pa.string()), ("pid", pa.string()), field])


def _cast(table: pa.Table, what: str, schema: pa.Schema) -> pa.Table:
    try:
        return table.cast(schema)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as error:
        raise InputError(f"{what}: columns {table.schema} do not fit {schema}: {error}") from error


def _pair_keys(table: pa.Table) -> pa.ChunkedArray:
    """One string per (qid, pid) pair, so pair membership is a vectorised `is_in`."""
    return pc.binary_join_element_wise(table["qid"], table["pid"], _KEY_SEPARATOR)


def _reject_duplicate_pairs(table: pa.Table, what: str) -> None:
    pairs = table.group_by(["qid", "pid"]).aggregate([([], "count_all")])
    if pairs.num_rows == table.num_rows:
        return
    duplicate = pairs.filter(pc.greater(pairs["count_all"], 1)).slice(0, 1).to_pylist()[0]
    raise InputError(
        f"{what}: passage {duplicate['pid']!r} appears more than once for query "
        f"{duplicate['qid']!r}"
    )


def _group_starts(codes: np.ndarray) -> np.ndarray:
    """Boolean mask of the first row of each run of equal codes (rows sorted by group)."""
    starts = np.ones(len(codes), dtype=bool)
    starts[1:] = codes[1:] != codes[:-1]
    return starts


def _ordered_run(run: Run) -> tuple[pa.Table, np.ndarray, np.ndarray]:
    """Validate a run; return it sorted by (qid, rank order), each row's group and position.

    Group ids number the queries 0..n-1 in table order; positions are 0-based within a query.
    """
    table = _as_table(run)
    order_column = "rank" if "rank" in table.column_names else "score"
    _require_columns(table, "run", ("qid", "pid", order_column))
    order_field = table.schema.field(order_column)
    table = _cast(table.select(["qid", "pid", order_column]), "run", _ids_and(order_field))
    _reject_duplicate_pairs(table, "run")
    if order_column == "rank":
        keys = [("qid", "ascending"), ("rank", "ascending")]
    else:
        keys = [("qid", "ascending"), ("score", "descending"), ("pid", "ascending")]
    table = table.sort_by(keys)
    codes = pc.dictionary_encode(table["qid"]).combine_chunks().indices.to_numpy()
    starts = _group_starts(codes)
    if order_column == "rank":
        ranks = table["rank"].to_numpy()
        tied = np.flatnonzero(~starts[1:] & (ranks[1:] == ranks[:-1]))
        if len(tied):
            row = tied[0] + 1
            raise InputError(
                f"run: rank {ranks[row]} appears more than once for query "
                f"{table['qid'][row].as_py()!r}"
            )
    groups = np.cumsum(starts) - 1
    positions = np.arange(len(codes)) - np.flatnonzero(starts)[groups]
    return table, groups, positions


def _checked_qrels(qrels: pa.Table) -> pa.Table:
    _require_columns(qrels, "qrels", ("qid", "pid", "relevance"))
    relevance = pa.field("relevance", pa.int64())
    qrels = _cast(qrels.select(["qid", "pid", "relevance"]), "qrels", _ids_and(relevance))
    _reject_duplicate_pairs(qrels, "qrels")
    return qrels


def _relevant_counts(qrels: pa.Table) -> dict[str, int]:
    """Number of relevant passages of each query that has at least one."""
    counts = pc.value_counts(qrels.filter(pc.greater(qrels["relevance"], 0))["qid"])
    return dict(
        zip(counts.field("values").to_pylist(), counts.field("counts").to_pylist(), strict=True)
    )


# --- standard measures (ir_measures) -------------------------------------------------------


def _parse_measures(names: Sequence[str]) -> tuple[dict[str, object], dict[str, int]]:
    """Split names into ir_measures measures and XTREME-R ``mAP@k`` cut-offs."""
    standard: dict[str, object] = {}
    xtreme: dict[str, int] = {}
    for name in names:
        match = _XTREME_MAP.fullmatch(name)
        if match:
            xtreme[name] = int(match.group(1))
            continue
        try:
            standard[name] = ir_measures.parse_measure(name)
        except (NameError, ValueError, TypeError) as error:
            raise ConfigError(f"unknown measure {name!r}: {error}") from error
    return standard, xtreme


def evaluate_run(run: Run, qrels: pa.Table, measures: Sequence[str]) -> dict[str, dict[str, float]]:
    """Per-query values of ``measures``, keyed by the names as given.

    Names are ir_measures measures (``"R@10"``, ``"RR@10"``, ``"nDCG@10"``, ``"AP@20"``, ...)
    or ``"mAP@k"`` for the XTREME-R definition (``map_at_k_xtreme``). The passage order is the
    run's rank order (see the module docstring), not trec_eval's score-then-docno order, so ties
    in score are broken as the retriever ranked them.

    Evaluated queries are exactly those with at least one relevant passage in ``qrels``:
    queries without one are excluded (their measures are undefined or constant), run rows of
    queries absent from qrels are ignored, and a judged query without run rows scores 0 on
    every measure, as ``trec_eval -c`` does (made explicit here, not left to the provider).
    """
    if not measures:
        raise ConfigError("no measures to evaluate")
    standard, xtreme = _parse_measures(measures)
    qrels = _checked_qrels(qrels)
    relevant_counts = _relevant_counts(qrels)
    table, groups, positions = _ordered_run(run)
    results: dict[str, dict[str, float]] = {qid: {} for qid in relevant_counts}
    if standard:
        judged_ids = pa.array(list(relevant_counts), pa.string())
        names_of: dict[object, list[str]] = {}
        for name, measure in standard.items():
            names_of.setdefault(measure, []).append(name)
        for metric in ir_measures.iter_calc(
            list(names_of),
            _nested(qrels.filter(pc.is_in(qrels["qid"], value_set=judged_ids)), "relevance"),
            _nested(_judged_run(table, positions, judged_ids), "score"),
        ):
            for name in names_of[metric.measure]:
                results[metric.query_id][name] = float(metric.value)
    for name, k in xtreme.items():
        for qid, value in _xtreme_map(table, groups, positions, qrels, relevant_counts, k).items():
            results[qid][name] = value
    return {
        qid: {name: values.get(name, 0.0) for name in measures} for qid, values in results.items()
    }


def _judged_run(table: pa.Table, positions: np.ndarray, judged_ids: pa.Array) -> pa.Table:
    """Run rows of judged queries with a score that ranks them exactly in run order."""
    judged = pc.is_in(table["qid"], value_set=judged_ids).to_numpy(zero_copy_only=False)
    return (
        table.select(["qid", "pid"])
        .filter(judged)
        .append_column("score", pa.array(-positions[judged].astype(np.float64)))
    )


def _nested(table: pa.Table, value_column: str) -> dict[str, dict[str, float]]:
    """{qid: {pid: value}}: the input ir_measures (pytrec_eval) consumes fastest."""
    nested: dict[str, dict[str, float]] = {}
    for qid, pid, value in zip(
        table["qid"].to_pylist(),
        table["pid"].to_pylist(),
        table[value_column].to_pylist(),
        strict=True,
    ):
        nested.setdefault(qid, {})[pid] = value
    return nested


# --- XTREME-R / LAReQA mAP@k ---------------------------------------------------------------


def map_at_k_xtreme(run: Run, qrels: pa.Table, k: int = 20) -> dict[str, float]:
    """Per-query mAP@k as LAReQA and XTREME-R report it for XQuAD-R.

    ``AP@k = sum_{i<=k} P@i * rel_i / min(R, k)`` with R the query's number of relevant
    passages. This follows ``average_precision_at_k`` in google-research/xtreme
    ``third_party/utils_lareqa.py`` (the LAReQA evaluation XTREME-R reuses): the divisor is
    ``min(len(targets), k)``, not R as in trec_eval's AP, so a query with more than k relevant
    passages can still reach 1.0. Queries with no relevant passage are excluded; judged queries
    missing from the run score 0.
    """
    qrels = _checked_qrels(qrels)
    table, groups, positions = _ordered_run(run)
    return _xtreme_map(table, groups, positions, qrels, _relevant_counts(qrels), k)


def _xtreme_map(
    table: pa.Table,
    groups: np.ndarray,
    positions: np.ndarray,
    qrels: pa.Table,
    relevant_counts: Mapping[str, int],
    k: int,
) -> dict[str, float]:
    if k < 1:
        raise ConfigError(f"mAP@k needs k >= 1, got {k}")
    relevant_keys = _pair_keys(qrels.filter(pc.greater(qrels["relevance"], 0)))
    is_relevant = pc.is_in(_pair_keys(table), value_set=relevant_keys.combine_chunks())
    hits = is_relevant.to_numpy(zero_copy_only=False).astype(np.float64)
    hits[positions >= k] = 0.0
    cumulative = np.cumsum(hits)
    first_rows = np.flatnonzero(positions == 0)
    hits_before_query = (cumulative - hits)[first_rows]
    precision_at_hits = hits * (cumulative - hits_before_query[groups]) / (positions + 1)
    ap_sums = np.bincount(groups, weights=precision_at_hits, minlength=len(first_rows))
    query_ids = table["qid"].take(pa.array(first_rows)).to_pylist()
    sums = dict(zip(query_ids, ap_sums.tolist(), strict=True))
    return {qid: sums.get(qid, 0.0) / min(relevant, k) for qid, relevant in relevant_counts.items()}


# --- aggregation ---------------------------------------------------------------------------


def aggregate(
    per_query: Mapping[str, Mapping[str, float]], query_langs: Mapping[str, str]
) -> dict[str, dict]:
    """Per-language means and their macro and micro averages.

    Returns ``{"per_lang": {lang: {measure: mean}}, "queries": {lang: n}, "macro": {measure:
    mean of the language means}, "micro": {measure: mean over all queries}}``, languages
    sorted. Macro weighs each language equally (XOR-Retrieve, XTREME-R); micro each query.
    """
    if not per_query:
        raise InputError("no per-query results to aggregate")
    measures = list(next(iter(per_query.values())))
    if not measures:
        raise InputError("per-query results have no measures")
    values: dict[str, dict[str, list[float]]] = {}
    for qid, row in per_query.items():
        if qid not in query_langs:
            raise InputError(f"query {qid!r} has no language in query_langs")
        if set(row) != set(measures):
            raise InputError(f"query {qid!r} has measures {sorted(row)}, expected {measures}")
        by_measure = values.setdefault(query_langs[qid], {m: [] for m in measures})
        for measure in measures:
            by_measure[measure].append(float(row[measure]))
    langs = sorted(values)
    per_lang = {lang: {m: fmean(values[lang][m]) for m in measures} for lang in langs}
    return {
        "per_lang": per_lang,
        "queries": {lang: len(values[lang][measures[0]]) for lang in langs},
        "macro": {m: fmean(per_lang[lang][m] for lang in langs) for m in measures},
        "micro": {m: fmean(float(row[m]) for row in per_query.values()) for m in measures},
    }


# --- XOR-Retrieve R@kt ---------------------------------------------------------------------


def xor_word_tokenize(text: str) -> list[str]:
    """NLTK Treebank word tokens of ``text``, without sentence splitting.

    The official script (AkariAsai/XORQA ``evals/eval_xor_retrieve.py``) calls
    ``nltk.tokenize.word_tokenize(text)``, which first splits sentences with the English Punkt
    model. Punkt data is a separate download that offline machines lack, so this is
    ``word_tokenize(text, preserve_line=True)``: identical tokens except that a sentence-final
    period inside the text stays attached to its word ("1775." rather than "1775", "."). A
    passage of S sentences therefore counts S-1 tokens fewer, and answer substrings match the
    same way unless an answer itself ends with such a period. The R@kt functions use
    ``official_tokenizer()`` unless told otherwise: ``nltk.word_tokenize`` itself where Punkt is
    installed, which reproduces the official numbers exactly, and this function elsewhere.
    """
    return _word_tokenizer.tokenize(text)


def punkt_installed() -> bool:
    """Whether NLTK's Punkt sentence model is on this machine (a separate download)."""
    import nltk

    for resource in ("tokenizers/punkt_tab/english/", "tokenizers/punkt/english.pickle"):
        try:
            nltk.data.find(resource)
            return True
        except LookupError:
            continue
    return False


def official_tokenizer() -> Callable[[str], list[str]]:
    """The official script's `nltk.word_tokenize` where Punkt is installed, else the Treebank
    path of `xor_word_tokenize` (what offline machines can run)."""
    if punkt_installed():
        import nltk

        return nltk.word_tokenize
    return xor_word_tokenize


def _kt_name(max_tokens: int) -> str:
    return f"R@{max_tokens / 1000:g}kt"


def _hits_at_budgets(
    ranked_texts: Mapping[str, Sequence[str]],
    answers: Mapping[str, Sequence[str]],
    budgets: Sequence[int],
    tokenize: Callable[[str], list[str]] | None,
) -> dict[str, list[float]]:
    tokenize = tokenize or official_tokenizer()
    if not budgets or min(budgets) < 1:
        raise ConfigError(f"token budgets must be positive, got {list(budgets)}")
    largest = max(budgets)
    token_cache: dict[str, list[str]] = {}
    hits: dict[str, list[float]] = {}
    for qid, question_answers in answers.items():
        span_answers = [answer for answer in question_answers if answer not in _YES_NO]
        if not span_answers:
            continue
        tokens: list[str] = []
        for text in ranked_texts.get(qid, ()):
            if text not in token_cache:
                token_cache[text] = tokenize(text)
            tokens += token_cache[text]
            if len(tokens) >= largest:
                break
        hits[qid] = []
        for budget in budgets:
            window = " ".join(tokens[:budget])
            hits[qid].append(float(any(answer in window for answer in span_answers)))
    return hits


def recall_at_kt(
    ranked_texts: Mapping[str, Sequence[str]],
    answers: Mapping[str, Sequence[str]],
    max_tokens: int,
    tokenize: Callable[[str], list[str]] | None = None,
) -> dict[str, float]:
    """Per-question hit (1.0 or 0.0) of the XOR-Retrieve R@kt measure for one token budget.

    ``ranked_texts`` maps a question id to its retrieved passage texts, best first; ``answers``
    maps it to its answer strings. As in the official ``evaluate_top_k_hit``: the passages'
    word tokens are concatenated in rank order and cut at ``max_tokens``, joined with single
    spaces, and the question is a hit when any answer other than the literal ``"yes"``/``"no"``
    is a (case-sensitive) substring. Questions whose answers are all yes/no are left out, as
    are questions without answers. Unlike the official loop over predictions, a question with
    answers but no ranked list counts as a miss, not as absent.
    """
    return {
        qid: hit[0]
        for qid, hit in _hits_at_budgets(ranked_texts, answers, [max_tokens], tokenize).items()
    }


def xor_retrieve_recall(
    ranked_texts: Mapping[str, Sequence[str]],
    answers: Mapping[str, Sequence[str]],
    budgets: Sequence[int] = (2000, 5000),
    tokenize: Callable[[str], list[str]] | None = None,
) -> dict[str, dict[str, float]]:
    """Per-question R@2kt and R@5kt hits (keys ``"R@2kt"``, ``"R@5kt"``), tokenising once.

    ``aggregate(result, query_langs)["macro"]`` is the official number: the mean over
    languages of each language's hit rate.
    """
    names = [_kt_name(budget) for budget in budgets]
    return {
        qid: dict(zip(names, hit, strict=True))
        for qid, hit in _hits_at_budgets(ranked_texts, answers, budgets, tokenize).items()
    }


# --- significance --------------------------------------------------------------------------


def paired_ttest(a: Mapping[str, float], b: Mapping[str, float]) -> tuple[float, float]:
    """Two-sided paired t-test of scores over the keys both systems have.

    The xQG paper's significance test (``scipy.stats.ttest_rel``). Keys are the test's units:
    `evaluate/paired.py` passes question groups (translations of one question are one sample),
    or queries where there are no groups. Degenerate cases, where scipy would return NaN or
    warn: identical scores on every key give ``(0.0, 1.0)`` (no evidence of a difference); a
    constant non-zero difference gives ``(+-inf, 0.0)``.
    """
    shared = sorted(a.keys() & b.keys())
    if len(shared) < 2:
        raise InputError(
            f"paired t-test needs at least 2 queries scored by both systems, got {len(shared)}"
        )
    x = np.array([a[qid] for qid in shared], dtype=np.float64)
    y = np.array([b[qid] for qid in shared], dtype=np.float64)
    differences = x - y
    if np.all(differences == differences[0]):
        if differences[0] == 0:
            return 0.0, 1.0
        return math.copysign(math.inf, differences[0]), 0.0
    result = stats.ttest_rel(x, y)
    return float(result.statistic), float(result.pvalue)
