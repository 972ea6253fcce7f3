"""Judging methods beyond one A-or-B verdict: calibrated order, pointwise, persona fit; and final
answers that are no answers."""

from __future__ import annotations

import math

import pytest

from star_gate.backends.base import SamplingParams
from star_gate.backends.fake import FakeBackend
from star_gate.config import ConfigError, load_config
from star_gate.data.records import AnswerFit, Conversation, Judgement
from star_gate.roles.players import Judge
from star_gate.roles.prompts import get_template
from star_gate.stages.evaluate import answer_fits, judge_answers, judge_answers_by_fit, persona_fits
from star_gate.stats import non_answer_share, win_rate


class BiasedJudge:
    """Scores by rule: log p('A') carries a constant bonus `bias` for the first position, and each
    answer saying GOOD earns `signal` for its letter (and for 'Yes' in the pointwise prompt)."""

    name = "biased"

    def __init__(self, bias: float = 1.0, signal: float = 0.5):
        self.bias, self.signal = bias, signal
        self.completions: list[str] = []

    def logprobs(self, chats, completions):
        self.completions += list(completions)
        scores = []
        for chat, completion in zip(chats, completions):
            request = chat[-1]["content"]
            if completion in ("Yes", "No"):
                answer = request.split("Answer:\n")[1].split("\n\nDoes this answer fit me?")[0]
                scores.append(
                    -1.0 + (self.signal if completion == "Yes" and "GOOD" in answer else 0.0)
                )
                continue
            first = request.split("Answer A:\n")[1].split("\n\nAnswer B:")[0]
            second = request.split("Answer B:\n")[1].split("\n\nWhich answer")[0]
            shown = first if completion == "A" else second
            scores.append(
                -1.0
                + (self.bias if completion == "A" else 0.0)
                + (self.signal if "GOOD" in shown else 0.0)
            )
        return scores

    def generate(self, chats, params):
        raise AssertionError("a log-prob judge never generates")


def make_judge(backend, method="logprobs") -> Judge:
    return Judge(
        backend, get_template("judge"), SamplingParams(temperature=0.0, max_new_tokens=4), method
    )


def answers(pairs, per_pair, good) -> list[Conversation]:
    """Sample s of every pair; the answer says GOOD where good(s)."""
    return [
        Conversation(
            p.task.task_id,
            p.persona.persona_id,
            s,
            target_turns=1,
            response=f"{'GOOD' if good(s) else 'plain'} answer number {s}.",
        )
        for p in pairs
        for s in range(per_pair)
    ]


@pytest.fixture
def pairs(dataset):
    return [pair for split in ("A", "B", "test") for pair in dataset.pairs(split)]


def test_calibrated_order_cancels_a_constant_position_preference(pairs):
    # The contender's answer is the GOOD one in even samples, the baseline's in odd samples; the
    # judge's bias toward A (1.0) outweighs the content signal (0.5), so every raw pick is A.
    contender = answers(pairs, 4, lambda s: s % 2 == 0)
    baseline = answers(pairs, 4, lambda s: s % 2 == 1)
    backend = BiasedJudge(bias=1.0, signal=0.5)
    judgements = judge_answers(
        contender, baseline, pairs, make_judge(backend), "Q_1", "calibrated", seed=0
    )
    assert len(backend.completions) == 4 * len(contender)  # both orders, 'A' and 'B' each
    assert [j.score for j in judgements] == [
        1.0 if j.sample_index % 2 == 0 else 0.0 for j in judgements
    ]
    assert all(
        j.margin == pytest.approx(0.5 if j.sample_index % 2 == 0 else -0.5) for j in judgements
    )
    assert all(j.shown_first == ("contender", "baseline") for j in judgements)
    assert all(
        j.verdicts == ("contender", "baseline") for j in judgements
    )  # raw: position A both times
    result = win_rate(judgements)
    assert (
        result.mean == 0.5 and result.position_bias == 1.0
    )  # raw bias reported beside the decision
    # The same judge, counterbalanced: every comparison is a tie; in one random order: the position.
    counterbalanced = judge_answers(
        contender, baseline, pairs, make_judge(BiasedJudge()), "Q_1", "counterbalanced", 0
    )
    assert {j.score for j in counterbalanced} == {0.5}
    good_contender = answers(pairs, 4, lambda s: True)
    calibrated = judge_answers(
        good_contender, baseline, pairs, make_judge(BiasedJudge()), "Q_1", "calibrated", 0
    )
    assert (
        win_rate([j for j in calibrated if j.sample_index % 2 == 0]).mean == 1.0
    )  # GOOD against plain
    assert all(j.score == 0.5 for j in calibrated if j.sample_index % 2 == 1)  # GOOD against GOOD


def test_calibrated_order_needs_log_probs(pairs):
    contender = answers(pairs, 1, lambda s: True)
    with pytest.raises(ValueError, match="calibrated"):
        judge_answers(
            contender,
            contender,
            pairs,
            make_judge(BiasedJudge(), "generate"),
            "Q_1",
            "calibrated",
            0,
        )


@pytest.mark.parametrize("order", ["random", "counterbalanced"])
def test_pointwise_judges_one_answer_at_a_time(pairs, order):
    contender = answers(pairs, 2, lambda s: s == 0)
    baseline = answers(pairs, 2, lambda s: s == 1)
    backend = BiasedJudge(bias=5.0)  # a position bonus that pointwise never meets
    judgements = judge_answers(
        contender, baseline, pairs, make_judge(backend, "pointwise"), "Q_1", order, seed=0
    )
    assert sorted(set(backend.completions)) == ["No", "Yes"]
    assert len(backend.completions) == 4 * len(contender)  # each answer once, whatever the order
    assert [j.score for j in judgements] == [
        1.0 if j.sample_index == 0 else 0.0 for j in judgements
    ]
    assert all(j.shown_first == () and j.verdicts == () for j in judgements)
    result = win_rate(judgements)
    assert (
        result.mean == 0.5 and result.count == len(contender) and math.isnan(result.position_bias)
    )


def test_pointwise_prompt_shows_persona_task_and_one_answer(dataset):
    pair = dataset.pairs("test")[0]
    seen = []

    class Recording(BiasedJudge):
        def logprobs(self, chats, completions):
            seen.extend(chats)
            return [0.0] * len(chats)

    make_judge(Recording(), "pointwise").fit_scores(
        [pair.persona], [pair.task.text], ["only this answer"]
    )
    system, user = seen[0][0]["content"], seen[0][-1]["content"]
    assert pair.persona.description in system and "Yes" in system
    assert (
        pair.task.text in user and "only this answer" in user and "Does this answer fit me?" in user
    )
    assert "Answer A" not in user


def test_persona_fit_prefers_the_answer_that_uses_the_persona(dataset):
    pair = dataset.pairs("test")[0]  # Priya Nair, who loves painting with watercolours
    tailored = "Since you love painting with watercolours, join an architect sketching club."
    generic = "Try something new and fun, like a local class near you."
    (mine, blind, length, unit, fit), (_, _, _, _, other_fit) = persona_fits(
        [pair.persona] * 2, [pair.task.text] * 2, [tailored, generic], FakeBackend()
    )
    assert unit == "words" and length == len(tailored.split())
    assert fit == pytest.approx((mine - blind) / length) and fit > other_fit
    contender = [Conversation(pair.task.task_id, pair.persona.persona_id, 0, 1, response=tailored)]
    baseline = [contender[0].replace(response=generic)]
    [judgement] = judge_answers_by_fit(contender, baseline, [pair], FakeBackend(), "Q_1")
    assert judgement.score == 1.0 and judgement.margin == pytest.approx(fit - other_fit)
    assert math.isnan(win_rate([judgement]).position_bias)
    [swapped] = judge_answers_by_fit(baseline, contender, [pair], FakeBackend(), "Q_1")
    assert swapped.score == 0.0


class PerTokenScorer:
    """A scorer that lists per-token log-probs: -1 per character of the completion, counted as
    one token per character, and 0.5 per character less when the persona is in the prompt."""

    name = "per-token"

    def token_logprobs(self, chats, completions):
        return [
            [-0.5 if "Some information about me" in chat[-1]["content"] else -1.0] * len(c)
            for chat, c in zip(chats, completions)
        ]

    def logprobs(self, chats, completions):
        raise AssertionError("per-token scores are used when the backend lists them")


def test_persona_fit_is_per_token_when_the_scorer_lists_tokens(dataset):
    pair = dataset.pairs("test")[0]
    conversations = [
        Conversation(pair.task.task_id, pair.persona.persona_id, s, 2, response=text)
        for s, text in enumerate(["four", ""])
    ]
    fits = answer_fits(conversations, [pair], PerTokenScorer())
    assert fits[0] == AnswerFit(
        pair.task.task_id, pair.persona.persona_id, 0, 2, -2.0, -4.0, 4, "tokens", 0.5
    )
    assert fits[1].length == 0 and fits[1].fit == 0.0  # an empty answer fits no one
    assert AnswerFit.from_json(fits[0].to_json()) == fits[0]


def test_non_answer_share():
    answers = ["", "Sure!", "Go to Lisbon in May!", "I recommend saving 10% of each pay cheque."]
    mean, sem, count = non_answer_share([*answers, None])
    assert (mean, count) == (pytest.approx(0.6), 5) and sem > 0
    assert non_answer_share([])[2] == 0


def test_old_judgement_records_load_and_new_ones_round_trip():
    old = {
        "task_id": "t",
        "persona_id": "p",
        "sample_index": 0,
        "target_turns": 1,
        "contender": "Q_1",
        "shown_first": ["contender"],
        "verdicts": ["contender"],
    }
    judgement = Judgement.from_json(old)
    assert judgement.margin is None and judgement.score == 1.0
    assert judgement.to_json() == {
        **old,
        "shown_first": ("contender",),
        "verdicts": ("contender",),
    }  # no new key
    calibrated = Judgement(
        "t", "p", 0, 1, "Q_1", ("contender", "baseline"), ("contender", "baseline"), -0.25
    )
    assert Judgement.from_json(calibrated.to_json()) == calibrated and calibrated.score == 0.0
    assert Judgement("t", "p", 0, 1, "Q_1", (), (), 0.0).score == 0.5
    assert Judgement("t", "p", 0, 1, "Q_1", (), (), math.nan).score is None


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (
            ["evaluate.judge_order=calibrated", "evaluate.judge_method=generate"],
            "needs judge_method 'logprobs'",
        ),
        (
            ["evaluate.judge_order=calibrated", "evaluate.judge_method=pointwise"],
            "needs judge_method 'logprobs'",
        ),
        (
            ["evaluate.judge_order=calibrated", "evaluate.judge_method=persona_fit"],
            "needs judge_method 'logprobs'",
        ),
        (["evaluate.pointwise_prompt=nope"], "pointwise_prompt 'nope' is not a template"),
        (["regularize.answer_prompt=nope"], "answer_prompt 'nope' is not a template"),
        (
            [
                "roles.judge.backend=openai",
                "roles.judge.logprobs=none",
                "evaluate.judge_method=pointwise",
            ],
            "cannot score with evaluate.judge_method 'pointwise'",
        ),
    ],
)
def test_config_refusals(overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, overrides)


def test_config_accepts_the_new_methods():
    config = load_config(None, ["evaluate.judge_order=calibrated"])
    assert config.evaluate.judge_method == "logprobs" and config.evaluate.persona_fit
    for method in ("pointwise", "persona_fit"):
        assert load_config(
            None, [f"evaluate.judge_method={method}", "evaluate.judge_order=counterbalanced"]
        )
    # a judge that cannot score is no obstacle when no judge is asked
    config = load_config(
        None,
        [
            "roles.judge.backend=openai",
            "roles.judge.logprobs=none",
            "evaluate.judge_method=persona_fit",
        ],
    )
    assert not config.evaluate.uses_judge and not config.evaluate.judge_scores
    assert load_config(
        None, ["regularize.answer_prompt=questioner_answer"]
    ).regularize.answer_prompt
    assert load_config(None, []).regularize.answer_prompt == ""
