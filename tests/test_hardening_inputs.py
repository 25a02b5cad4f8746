"""Bad inputs against the real app (a `python app.py` subprocess on the real offline model, driven by
gradio_client): broken, odd and hostile audio and text, each made by the test. Each case gets the
right result or a clear message, leaves the conversation and its KV cache as they were when it is
refused, is logged in the data dir, and the server answers the next turn (see
evaluations/reliability/inputs.py for what each check compares)."""

from __future__ import annotations

import pytest

from evaluations.reliability import inputs
from evaluations.reliability.judge_outage import judge_injections

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def cases(tmp_path_factory) -> dict[str, inputs.Case]:
    return {c.name: c for c in inputs.make_cases(tmp_path_factory.mktemp("bad-inputs"))}


@pytest.fixture(scope="module")
def reference(hardened_app) -> inputs.Reference:
    return inputs.reference(hardened_app.url, hardened_app.data_dir)


@pytest.fixture(scope="module")
def outcomes() -> dict[str, inputs.CaseResult]:
    return {}


def test_the_suite_has_at_least_25_generated_cases(cases):
    assert len(cases) >= 25 and set(cases) == set(inputs.CASE_NAMES)
    kinds = {c.kind for c in cases.values()}
    assert kinds == {"audio", "text", "oversize"}
    assert {c.expect for c in cases.values()} == {"answer", "error"}


@pytest.mark.parametrize("name", inputs.CASE_NAMES)
def test_bad_input(name, cases, reference, outcomes, hardened_app):
    result = inputs.run_case(hardened_app.url, hardened_app.data_dir, cases[name], reference)
    outcomes[name] = result
    print(f"\n{name}: {result.outcome} in {result.seconds:.1f} s: {result.shown[:120]!r}")
    assert result.ok, "\n".join(result.problems)


def test_injection_aimed_at_the_judge_is_cut_before_judging(outcomes, hardened_app, tmp_path):
    """The logged turns whose question (spoken, then heard by the cascade; or typed) tells the judge
    what to answer: a gullible fake judge never sees that sentence, and the judgement is flagged."""
    turn_ids = [t for name in ("injection_for_judge", "injection_text") if name in outcomes
                for t in outcomes[name].turn_ids[:1]]
    if len(turn_ids) < 2:
        pytest.skip("the injection cases did not run")
    checks = judge_injections(hardened_app.data_dir, turn_ids, tmp_path)
    assert len(checks) == 2
    for check in checks:
        print(f"\n{check}")
        assert check.ok, check  # flagged, and no sentence addressed to the judge reached it
        assert check.verdict in ("accept", "reject", "unjudged")  # judged on the answer, or left to a person
