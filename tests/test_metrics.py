"""The evaluation's decision logic on hand-made cases: metrics, verdict parsing, the heuristic judge, agreement."""

from __future__ import annotations

import io
import math
import re

import orjson
import pytest
from rich.console import Console

from hallurun.eval import heuristic, report
from hallurun.eval.judge import HeuristicJudge
from hallurun.eval.metrics import agreement, bin_results, by_bin, cohen_kappa
from hallurun.eval.question import RETRY_MARKER, Verdict, retry_prompt
from hallurun.eval.text import is_empty, token_f1, tokens
from hallurun.tasks.longwiki import questions as lw_questions
from hallurun.tasks.longwiki.questions import VERIFY, extract_claims, parse_claims, parse_support, supported
from hallurun.tasks.longwiki.scoring import LongJudgment, prompt_scores
from hallurun.tasks.longwiki.scoring import rates as longwiki
from hallurun.tasks.mixedentities.questions import believes_exists, exists_prompt, parse_exists
from hallurun.tasks.mixedentities.scoring import EntityJudgment
from hallurun.tasks.mixedentities.scoring import rates as mixedentities
from hallurun.tasks.precisewikiqa import chart
from hallurun.tasks.precisewikiqa import questions as qa
from hallurun.tasks.precisewikiqa.scoring import SCORING as PRECISEWIKIQA
from hallurun.tasks.precisewikiqa.scoring import QAJudgment
from hallurun.tasks.precisewikiqa.scoring import judge as judge_precisewikiqa
from hallurun.tasks.precisewikiqa.scoring import rates as precisewikiqa

# --- PreciseWikiQA metrics ----------------------------------------------------------------------------------


def test_precisewikiqa_metrics_by_hand() -> None:
    judgments = [
        QAJudgment("right", abstained=False, verdict="CORRECT", bin="9"),
        QAJudgment("wrong", abstained=False, verdict="INCORRECT", bin="9"),
        QAJudgment("vague", abstained=False, verdict="UNVERIFIABLE", bin="0"),
        # An abstention that a correctness judge also called wrong: it is a refusal, never a hallucination.
        QAJudgment("refused-and-wrong", abstained=True, verdict="INCORRECT", bin="0"),
        QAJudgment("empty", abstained=True, bin="0"),  # how evaluate records an empty answer
        QAJudgment("unreadable", abstained=None, problem="unparseable", bin="0"),
        QAJudgment("unreadable-correctness", abstained=False, verdict=None, problem="unparseable", bin="9"),
        QAJudgment("judge-down", abstained=None, problem="judge_failed", bin="9"),
    ]
    m = precisewikiqa(judgments)
    # Scored: right, wrong, vague, refused-and-wrong, empty. Answered: right, wrong, vague.
    assert m["halu_Rate"] == pytest.approx(2 / 3)
    assert m["refusal_rate"] == pytest.approx(2 / 5)
    assert m["correct_rate"] == pytest.approx(1 / 5)
    assert m["counts"] == {"items": 8, "scored": 5, "abstained": 2, "answered": 3, "correct": 1, "incorrect": 1,
                           "unverifiable": 1, "hallucinated": 2, "unparseable": 2, "judge_failed": 1}
    bins = by_bin(judgments, precisewikiqa)
    assert list(bins) == ["0", "9"]
    assert bins["0"]["halu_Rate"] == 1.0 and bins["0"]["refusal_rate"] == pytest.approx(2 / 3)
    assert bins["9"]["halu_Rate"] == 0.5 and bins["9"]["correct_rate"] == 0.5


def test_precisewikiqa_rates_are_none_without_a_denominator() -> None:
    m = precisewikiqa([QAJudgment("a", abstained=True), QAJudgment("b", None, problem="unparseable")])
    assert m["halu_Rate"] is None and m["refusal_rate"] == 1.0 and m["correct_rate"] == 0.0
    assert precisewikiqa([])["refusal_rate"] is None


def test_empty_generation_is_an_abstention_decided_without_a_judge() -> None:
    class NoJudge(HeuristicJudge):
        def ask(self, question, inputs):
            assert "e" not in inputs, "an empty answer must not be sent to the judge"
            stage = question.stage
            return {i: Verdict(False if stage == "abstain" else "CORRECT", None, {stage: "ok"}) for i in inputs}

    records = [{"id": "e", "prompt": "Q1?", "answer": "x", "generation": "  \n"},
               {"id": "f", "prompt": "Q2?", "answer": "y", "generation": "y"}]
    for judge in (HeuristicJudge(), NoJudge()):
        out = {j["id"]: j for j in judge_precisewikiqa(records, judge, {})}
        assert out["e"]["empty"] and out["e"]["abstained"] is True and out["e"]["hallucinated"] is None
        assert out["f"]["abstained"] is False and out["f"]["verdict"] == "CORRECT"
        metrics, _ = PRECISEWIKIQA.metrics(list(out.values()))
        assert metrics["refusal_rate"] == 0.5 and metrics["halu_Rate"] == 0.0
    assert is_empty("") and is_empty(" \t\n") and not is_empty(".")
    assert heuristic.is_abstaining("")


# --- MixedEntities and LongWiki metrics ---------------------------------------------------------------------


def test_mixedentities_metrics() -> None:
    m = mixedentities([EntityJudgment("a", True), EntityJudgment("b", False), EntityJudgment("c", False),
                       EntityJudgment("d", False), EntityJudgment("e", None, problem="unparseable")])
    assert m["refusal_rate"] == 0.75 and m["false_acceptance_rate"] == 0.25
    assert m["counts"]["scored"] == 4 and m["counts"]["unparseable"] == 1


def test_longwiki_per_prompt_scores_and_average() -> None:
    assert prompt_scores(2, 4) == (0.5, 2 / 32, pytest.approx(2 * 0.5 * (2 / 32) / (0.5 + 2 / 32)))
    assert prompt_scores(40, 40) == (1.0, 1.0, 1.0)  # recall is capped at 1 past 32 supported claims
    assert prompt_scores(0, 3) == (0.0, 0.0, 0.0)
    m = longwiki([
        LongJudgment("a", (True, False, None, True)),  # the claim without a verdict is left out: 2 of 3
        LongJudgment("b", tuple([True] * 40)),
        LongJudgment("refused", ()),  # no claim: an abstention, outside the averages
        LongJudgment("unreadable", None, problem="unparseable"),
        LongJudgment("no-verdicts", (None, None)),
    ])
    pa, ra, fa = prompt_scores(2, 3)
    assert m["precision"] == pytest.approx((pa + 1.0) / 2)
    assert m["recall@32"] == pytest.approx((ra + 1.0) / 2)
    assert m["f1@32"] == pytest.approx((fa + 1.0) / 2)
    assert m["refusal_rate"] == pytest.approx(1 / 3)
    assert m["counts"]["claims"] == 43 and m["counts"]["supported"] == 42
    assert m["counts"]["claims_without_verdict"] == 3 and m["counts"]["unparseable"] == 2


# --- agreement ----------------------------------------------------------------------------------------------


def test_cohen_kappa_known_values() -> None:
    # 50 items: both yes 20, both no 15, A yes/B no 5, A no/B yes 10 → p_o = .7, p_e = .5 → kappa .4
    pairs = [(1, 1)] * 20 + [(0, 0)] * 15 + [(1, 0)] * 5 + [(0, 1)] * 10
    assert cohen_kappa(pairs) == pytest.approx(0.4)
    assert cohen_kappa([(1, 1), (0, 0)]) == 1.0
    assert cohen_kappa([(1, 1), (1, 1)]) is None  # chance agreement is 1: undefined
    assert cohen_kappa([]) is None
    report = agreement("abstained", {"a": True, "b": False, "c": None}, {"a": True, "b": True, "c": True})
    assert report == {"decision": "abstained", "items": 2, "agree": 1, "agreement": 0.5, "kappa": 0.0}


# --- verdict parsing ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(("reply", "expected"), [
    ('{"is_abstaining": true}', True),
    ('{"is_abstaining":false}', False),
    ('```json\n{"is_abstaining": True}\n```', True),
    ("Result: {'is_abstaining': false}", False),
    ('The chatbot declines. {"is_abstaining": "true"}', True),
    ("is_abstaining: false", False),
    ('{"is_abstaining": true} or {"is_abstaining": false}', None),  # both: not a verdict
    ("The chatbot abstains.", None),
    ("", None),
])
def test_parse_abstention(reply: str, expected: bool | None) -> None:
    assert qa.parse_abstention(reply) is expected


@pytest.mark.parametrize(("reply", "expected"), [
    # The whole reply is a label, in any case, with or without emphasis or punctuation.
    ("CORRECT", "CORRECT"),
    ("INCORRECT", "INCORRECT"),  # not read as CORRECT
    ("incorrect", "INCORRECT"),
    ("**UNVERIFIABLE**", "UNVERIFIABLE"),
    ("Correct.", "CORRECT"),
    # The requested form, and other verdict lines: read from that line alone.
    ("Verdict: INCORRECT", "INCORRECT"),
    ("**Verdict:** unverifiable", "UNVERIFIABLE"),
    ("The gold answer is 1889 and the response says 1889.\nFinal answer: CORRECT", "CORRECT"),
    ("Verdict: INCORRECT\nThe CORRECT year is 1889, not 1887.", "INCORRECT"),
    ("Answer: INCORRECT\nReason: the CORRECT answer is 1889.", "INCORRECT"),
    ("Verdict: CORRECT or INCORRECT", None),  # two labels in the conclusion
    ("Verdict: Incorrect, the response says 1887.", "INCORRECT"),
    ("Verdict: Correct answer is 1889, so it is wrong", None),  # "Correct answer": not a label standing alone
    # A leading label word in any case, when nothing later concludes otherwise.
    ("Incorrect. The response says 1887.", "INCORRECT"),
    ("Incorrect, the response says 1887.", "INCORRECT"),
    # The conclusion wins over an opening word (issue 13, item 10).
    ("Correct. Although the response names the right city, it gives 1887, so this is INCORRECT.", "INCORRECT"),
    ("CORRECT. On a closer look the response gives 1887, not 1889. INCORRECT", "INCORRECT"),
    ("The response gives 1889, which matches. CORRECT", "CORRECT"),
    ("Correct answer: 1889; the response says 1887, so INCORRECT", "INCORRECT"),
    ("The response gives 1887 while the gold answer is 1889.\n\nTherefore the response is INCORRECT.", "INCORRECT"),
    # A lower-case "not correct" in running text does not veto a clear label.
    ("The spelling is not correct, but it names the same person. CORRECT", "CORRECT"),
    ("The wording is not correct English; still, the answer is the right one.\nVerdict: CORRECT", "CORRECT"),
    ('{"verdict": "UNVERIFIABLE"}', "UNVERIFIABLE"),
    ('{"verdict": "incorrect"}', "INCORRECT"),
    # Unparseable: negated labels, two labels in the conclusion, no label, lower case in running text.
    ("NOT CORRECT", None),
    ("Not correct.", None),
    ("INCORRECT. The response is not CORRECT.", None),
    ("CORRECT or INCORRECT", None),
    ("It could be CORRECT or INCORRECT, hard to say.", None),
    ("the response is correct", None),  # lower case in running text says nothing
    ("the response is incorrect, so the verdict is unclear", None),
    ("Verdict: unclear", None),
    ("maybe", None),
    ("", None),
])
def test_parse_correctness(reply: str, expected: str | None) -> None:
    assert qa.parse_correctness(reply) == expected


@pytest.mark.parametrize(("reply", "expected"), [
    ("SUPPORTED", True), ("Not supported.", False), ("NOT_SUPPORTED", False), ("Unsupported", False),
    ("supported", True), ("Verdict: NOT SUPPORTED", False), ("Verdict: supported", True),
    ("The claim is NOT SUPPORTED by the evidence.", False), ('{"is_supported": true}', True),
    # The conclusion wins over the first word; lower-case prose does not veto a label.
    ("Supported. However, the evidence gives 1890, not 1889, so the claim is NOT SUPPORTED.", False),
    ("Not supported at first sight, but the second passage states it. SUPPORTED", True),
    ("The evidence is not supported by a source, yet it states the claim.\nVerdict: SUPPORTED", True),
    ("Verdict: SUPPORTED\nThe passage that is NOT SUPPORTED by others is irrelevant here.", True),
    ("SUPPORTED or NOT SUPPORTED", None), ("I cannot tell", None), ("the claim is supported", None),
    ("Verdict: SUPPORTED or NOT SUPPORTED", None), ("", None),
])
def test_parse_support(reply: str, expected: bool | None) -> None:
    assert parse_support(reply) is expected


@pytest.mark.parametrize(("reply", "expected"), [
    ('{"is_abstaining": true}', True),
    ('Verdict: {"is_abstaining": false}', False),
    ('The chatbot says it cannot verify the date.\n{"is_abstaining": true}', True),
    ('{"is_abstaining": false, "reason": "it answers 1889"}', False),
    ('{"is_abstaining": true}\nOn reflection: {"is_abstaining": false}', None),  # two verdicts: never a guess
    ('It abstains: "is_abstaining" = true', True),
    ('{"is_abstaining": null}', None),
    ("true", None),
])
def test_parse_abstention_more_replies(reply: str, expected: bool | None) -> None:
    assert qa.parse_abstention(reply) is expected


def test_templates_ask_for_what_the_parsers_read() -> None:
    """Every label a template offers, written the way it asks, reads back as that label."""
    c = qa.correctness_prompt("Q?", "gold", "A.")
    for label in qa.CORRECTNESS_LABELS:
        assert f"Verdict: {label}" in c and qa.parse_correctness(f"Verdict: {label}") == label
    v = lw_questions.verify_prompt("C.", "E.")
    assert "Verdict: SUPPORTED" in v and "Verdict: NOT SUPPORTED" in v
    assert parse_support("Verdict: SUPPORTED") is True
    assert parse_support("Verdict: NOT SUPPORTED") is False
    for question in (qa.CORRECT, VERIFY):
        assert "Verdict:" in retry_prompt("ORIGINAL", "hmm", question.reply_format)
        assert question.parse(retry_prompt("ORIGINAL", "hmm", question.reply_format)) is None  # every label


def test_parse_claims_and_exists() -> None:
    assert parse_claims('Claims: ["A was born in 1900.", "A was a painter.", "A was born in 1900."]') == [
        "A was born in 1900.", "A was a painter."]
    assert parse_claims('[{"claim": "X is a city."}]') == ["X is a city."]
    assert parse_claims("[]") == [] and parse_claims("No verifiable claims.") == []
    assert parse_claims("1. X is a city.\n2. X has a port.") == ["X is a city.", "X has a port."]
    assert parse_claims("X is a city.") is None and parse_claims("[1, 2]") is None
    assert parse_exists('{"believes_exists": false}') is False
    assert parse_exists("it exists") is None


def test_retry_prompt_quotes_the_unreadable_reply() -> None:
    prompt = retry_prompt("ORIGINAL", "hmm, hard to say", qa.ABSTAIN.reply_format)
    assert prompt.startswith("ORIGINAL") and f"{RETRY_MARKER}\n<<<\nhmm, hard to say\n>>>" in prompt
    assert '{"is_abstaining": true}' in prompt


def test_templates_put_item_text_after_stage_specific_labels() -> None:
    a = qa.abstain_prompt("Q?", "A.")
    c = qa.correctness_prompt("Q?", "gold", "A.")
    assert "Question: Q?\nChatbot's answer: A." in a and "Gold answer" not in a
    assert "Question: Q?\nGold answer: gold\nChatbot's answer: A." in c
    assert '"{name}"' not in exists_prompt("What is the animal Foo bar?", "Foo bar", "", "x")
    assert "Claim to check: C." in lw_questions.verify_prompt("C.", "E.")


# --- the heuristic judge ------------------------------------------------------------------------------------


@pytest.mark.parametrize(("answer", "abstains"), [
    ("I don't know.", True),
    ("I couldn't find any information about that game.", True),
    ("I’m not sure who that is.", True),  # a curly apostrophe
    ("I do not have enough information to answer.", True),
    ("That is beyond my knowledge cut-off.", True),
    ("I know nothing about Quux.", True),
    ("The tower was completed in 1889.", False),
    ("There is no evidence that he joined a team in 2014; he retired in 2013.", False),  # a premise correction
])
def test_heuristic_abstention(answer: str, abstains: bool) -> None:
    assert heuristic.is_abstaining(answer) is abstains


@pytest.mark.parametrize(("answer", "gold", "verdict"), [
    ("It was completed in 1889.", "1889", "CORRECT"),
    ("It was completed in 1887.", "1889", "INCORRECT"),
    ("The capital is Brasilia.", "Brasília", "CORRECT"),  # accents
    ("There are 4 of them.", "four", "CORRECT"),  # number words
    ("She married the painter Diego Rivera in 1929.", "Diego Rivera", "CORRECT"),
    ("It was the company of Gustave Eiffel.", "Gustave Eiffel's company", "CORRECT"),  # token F1, not containment
    ("He was born in Paris.", "Ulm", "INCORRECT"),
])
def test_heuristic_correctness(answer: str, gold: str, verdict: str) -> None:
    assert qa.heuristic_correctness(answer, gold) == verdict


def test_heuristic_token_f1_and_normalization() -> None:
    assert tokens("The Río Tinto's mouth!") == ["rio", "tintos", "mouth"]
    assert token_f1(["a", "b"], ["a", "b"]) == 1.0
    assert token_f1(["a", "b"], ["a", "c", "d", "e"]) == pytest.approx(2 * 0.25 * 0.5 / 0.75)
    assert token_f1([], ["a"]) == 0.0


@pytest.mark.parametrize(("answer", "believes"), [
    ("The Lutra vulgaris is a small mammal found in European rivers.", True),
    ("I couldn't find any information about a plant called Quercus ursina.", False),
    ("Quercus ursina does not appear to be a recognized species; it may be a misspelling.", False),
    ("I'm not aware of a medicine named Amoxiprazole.", False),
    ("This seems to be a fictional organism.", False),
    ("", False),
])
def test_heuristic_nonexistent_entities(answer: str, believes: bool) -> None:
    assert believes_exists(answer) is believes


def test_heuristic_claims_and_support() -> None:
    text = ("Marie Curie was born in Warsaw in 1867. She won two Nobel Prizes! Why? "
            "I am not sure about her later years.\n- She worked in Paris with Pierre Curie.")
    assert extract_claims(text) == ["Marie Curie was born in Warsaw in 1867.", "She won two Nobel Prizes!",
                                              "She worked in Paris with Pierre Curie."]
    evidence = "Marie Curie was born in Warsaw in 1867 and later worked in Paris with Pierre Curie."
    assert supported("Marie Curie was born in Warsaw in 1867.", evidence)
    assert not supported("Marie Curie was born in Warsaw in 1868.", evidence)  # numbers must match
    assert not supported("She won two Nobel Prizes!", evidence)


# --- undefined rates: None in the results, NaN in the chart, n/a in the tables ------------------------------


def _results_with_an_unanswered_bin() -> dict:
    judgments = [
        {"id": "a", "h_score_cat": 0, "abstained": True, "verdict": None, "problem": None},  # bin 0: all abstain
        {"id": "b", "h_score_cat": 0, "abstained": True, "verdict": None, "problem": None},
        {"id": "c", "h_score_cat": 5, "abstained": False, "verdict": "CORRECT", "problem": None},
        {"id": "d", "h_score_cat": 5, "abstained": False, "verdict": "INCORRECT", "problem": None},
        {"id": "e", "h_score_cat": 9, "abstained": None, "verdict": None, "problem": "unparseable"},  # bin 9: none
    ]
    metrics, bins = PRECISEWIKIQA.metrics(judgments)
    metrics.pop("counts")
    return {"evaluator": "precisewikiqa", "model": "m", "judge": "j", **metrics, "counts": {"items": 5},
            "by_h_score_cat": bin_results(bins or {})}


def test_undefined_rates_are_null_in_eval_results_never_zero() -> None:
    results = _results_with_an_unanswered_bin()
    saved = orjson.loads(orjson.dumps(results))
    assert saved["by_h_score_cat"]["0"] == {"halu_Rate": None, "refusal_rate": 1.0, "correct_rate": 0.0,
                                            "items": 2, "scored": 2, "answered": 0}
    assert saved["by_h_score_cat"]["9"]["halu_Rate"] is None and saved["by_h_score_cat"]["9"]["refusal_rate"] is None
    assert saved["by_h_score_cat"]["5"]["halu_Rate"] == 0.5 and saved["halu_Rate"] == 0.5
    with pytest.raises(ValueError):
        prompt_scores(0, 0)  # no claim with a verdict: no precision, not 0.0


def test_chart_series_leave_undefined_rates_as_gaps() -> None:
    labels, bars = chart.series(_results_with_an_unanswered_bin())
    assert labels == ["0", "5", "9"]
    halu, refusal = bars
    assert halu.key == "halu_Rate" and refusal.key == "refusal_rate"
    assert math.isnan(halu.values[0]) and halu.values[1] == 50.0 and math.isnan(halu.values[2])
    assert refusal.values[:2] == [100.0, 0.0] and math.isnan(refusal.values[2])
    assert halu.gap_note(0) == "n/a\n0 answered" and halu.gap_note(1) is None
    assert refusal.gap_note(2) == "n/a\n0 scored" and refusal.gap_note(0) is None
    assert chart.tick_labels(_results_with_an_unanswered_bin()) == ["0\n2 items", "5\n2 items", "9\n1 item"]


def test_tables_show_undefined_rates_as_n_a() -> None:
    results = _results_with_an_unanswered_bin()

    def text(table: object) -> str:
        console = Console(file=io.StringIO(), width=200, color_system=None)
        console.print(table)
        return console.file.getvalue()  # type: ignore[attr-defined]

    def cells(line: str) -> list[str]:
        return [c.strip() for c in re.split("[│┃]", line)[1:-1]]

    by_bin_table = report.bins_table(results, PRECISEWIKIQA.headline, PRECISEWIKIQA.bins_key)
    rows = {cells(line)[0]: cells(line)[1:] for line in text(by_bin_table).splitlines() if len(cells(line)) > 3}
    assert rows.pop("h_score_cat") == ["items", "scored", "answered", "halu_Rate", "refusal_rate", "correct_rate"]
    assert rows == {"0": ["2", "2", "0", "n/a", "100.0%", "0.0%"], "5": ["2", "2", "2", "50.0%", "0.0%", "50.0%"],
                    "9": ["1", "0", "0", "n/a", "n/a", "n/a"]}
    overall_table = report.metrics_table({**results, "halu_Rate": None}, PRECISEWIKIQA.headline)
    overall = {cells(line)[2]: cells(line)[1] for line in text(overall_table).splitlines() if len(cells(line)) == 3}
    assert overall["halu_Rate"] == "n/a" and overall["refusal_rate"] == "50.0%"
    assert report.percent(None) == "n/a" and report.percent(0.0) == "0.0%"
