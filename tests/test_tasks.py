"""Verifiers, teacher styles, generator determinism and split disjointness of the toy task families."""
from __future__ import annotations

import pytest

from benchmarks.tasks import FAMILIES, TEACHER_STYLES, draw_payloads, favours_correct_mode, split_of


@pytest.mark.parametrize("name,payload,answer,wrong", [
    ("sort", "83512", "12358", "85321"),
    ("rev", "abcde", "edcba", "abcde"),
    ("count", "aabcadae", "3", "5"),       # letter a in "abcadae": 3 times; wrong mode counts the others: 8 - 3 = 5
    ("add", "07919", "30242", "74686"),    # 0+3=3, 7+3=10->0, 9+3=12->2, 1+3=4, 9+3=2 ; wrong: 0-3=7, 7-3=4, 9-3=6, 1-3=8, 9-3=6
    ("max", "31415", "5", "1"),
    ("shift", "abzyx", "bcazy", "zayxw"),
])
def test_verifier_accepts_right_and_rejects_wrong(name, payload, answer, wrong):
    fam = FAMILIES[name]
    assert fam.answer(payload) == answer
    assert fam.verify(payload, answer) == 1.0
    assert fam.verify(payload, wrong) == 0.0
    assert fam.verify(payload, fam.distractor(payload)) == 0.0
    assert fam.verify(payload, "") == 0.0


def test_count_payload_semantics():
    # payload = queried letter + 8 letters: "a" + "abcadae" is only 7, so use a full 8-letter word
    fam = FAMILIES["count"]
    assert fam.answer("aabcadaea") == "4"          # a,b,c,a,d,a,e,a -> 4 a's
    assert fam.distractor("aabcadaea") == "4"      # 8 - 4
    assert fam.steps("aabcadaea") == ["1", "4", "6", "8"]


@pytest.mark.parametrize("name", list(FAMILIES))
@pytest.mark.parametrize("style", TEACHER_STYLES)
def test_every_teacher_style_is_a_valid_solution(name, style):
    fam = FAMILIES[name]
    for p in draw_payloads(name, "train", 20, seed=0):
        assert fam.verify(p, fam.label(p, style)) == 1.0


def test_teacher_styles_look_as_documented():
    fam = FAMILIES["sort"]
    assert fam.label("83512", "worked") == "1,2,3,5,8|12358"
    assert fam.label("83512", "mild") == "|12358"
    assert fam.label("83512", "own") == "12358"
    assert fam.label("83512", "partial") == "1|12358"            # the first worked step only
    assert fam.label("83512", "sparse") == "|12358"              # md5("sparse:83512") % 4 == 0: delimiter
    assert fam.label("12345", "sparse") == "12345"               # md5("sparse:12345") % 4 == 2: own format
    assert FAMILIES["rev"].label("abcde", "partial") == "e|edcba"
    assert fam.prompt("83512") == "sort:83512="


def test_sparse_style_writes_the_delimiter_on_a_quarter_of_the_prompts():
    ps = draw_payloads("sort", "train", 4000, seed=0)
    frac = sum(FAMILIES["sort"].label(p, "sparse").startswith("|") for p in ps) / len(ps)
    assert 0.23 < frac < 0.27   # 1 in SPARSE_EVERY = 4 (s.e. 0.007 at 4,000 prompts)


def test_world_config_accepts_every_teacher_style_and_its_base_ignores_it():
    from benchmarks.world import WorldConfig
    keys = {WorldConfig(teacher_style=s).base_key() for s in TEACHER_STYLES}
    assert len(keys) == 1   # hint_frac 0: the base never sees a teacher label


def test_generators_are_deterministic_and_splits_disjoint():
    a = draw_payloads("sort", "train", 50, seed=3)
    assert a == draw_payloads("sort", "train", 50, seed=3)
    assert a != draw_payloads("sort", "train", 50, seed=4)
    ev = draw_payloads("sort", "eval", 50, seed=3)
    ho = draw_payloads("sort", "heldout", 50, seed=3)
    assert not set(a) & set(ev) and not set(a) & set(ho) and not set(ev) & set(ho)
    assert all(split_of("sort", p) == "eval" for p in ev)
    assert len(set(a)) == 50


def test_favoured_prompts_are_about_thirty_percent():
    ps = draw_payloads("sort", "train", 2000, seed=0)
    frac = sum(map(favours_correct_mode, ps)) / len(ps)
    assert 0.25 < frac < 0.35   # digits 2,3,4 lead: 3/10
