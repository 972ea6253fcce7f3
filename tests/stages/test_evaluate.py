"""Win-rate bookkeeping, position bias, the random-persona mapping and the persona-gap share."""

from __future__ import annotations

import math

import pytest

from star_gate.backends.base import SamplingParams
from star_gate.data.records import Conversation, Judgement, Pair
from star_gate.roles.players import Judge
from star_gate.roles.prompts import get_template
from star_gate.stages.evaluate import judge_answers, random_personas
from star_gate.stats import mean_sem, persona_gap_share, position_bias, win_rate


class ScriptedJudge:
    """A judge backend that replies by rule: always the first position, or the answer saying GOOD."""

    def __init__(self, rule: str):
        self.name = f"judge-{rule}"
        self.rule = rule
        self.prompts = 0

    def generate(self, chats, params):
        self.prompts += len(chats)
        replies = []
        for chat in chats:
            request = chat[-1]["content"]
            first = request.split("Answer A:\n")[1].split("\n\nAnswer B:")[0]
            if self.rule == "first":
                replies.append(["A"])
            elif self.rule == "good":
                replies.append(["A" if "GOOD" in first else "B"])
            else:
                replies.append(["I cannot decide."])
        return replies

    def logprobs(self, chats, completions):
        self.prompts += len(chats)
        return [-1.0 if completion == "A" else -2.0 for completion in completions]  # prefers A


def answered(pairs: list[Pair], per_pair: int, text: str) -> list[Conversation]:
    return [
        Conversation(
            p.task.task_id, p.persona.persona_id, s, target_turns=1 + s % 3, response=f"{text} {s}"
        )
        for p in pairs
        for s in range(per_pair)
    ]


def make_judge(rule: str, method: str = "generate") -> Judge:
    return Judge(
        ScriptedJudge(rule),
        get_template("judge"),
        SamplingParams(temperature=0.0, max_new_tokens=4),
        method,
    )


@pytest.fixture
def many_pairs(dataset):
    return [pair for split in ("A", "B", "test") for pair in dataset.pairs(split)]


def judged(pairs, rule, order, per_pair=40, method="generate", seed=3):
    contender = answered(pairs, per_pair, "GOOD answer")
    baseline = answered(pairs, per_pair, "plain answer")
    return judge_answers(contender, baseline, pairs, make_judge(rule, method), "Q_1", order, seed)


def test_always_first_judge_randomized_is_chance_with_full_position_bias(many_pairs):
    judgements = judged(many_pairs, "first", "random")  # 12 pairs x 40 = 480 comparisons
    result = win_rate(judgements)
    assert result.count == 480 and result.unreadable == 0
    assert abs(result.mean - 0.5) < 3 * result.sem and abs(result.mean - 0.5) < 0.08
    assert result.position_bias > 0.999
    # the contender was shown first about half the time, and that is when it "won"
    firsts = [j.shown_first[0] == "contender" for j in judgements]
    assert [j.score for j in judgements] == [1.0 if f else 0.0 for f in firsts]


def test_always_first_judge_counterbalanced_is_all_ties(many_pairs):
    result = win_rate(judged(many_pairs, "first", "counterbalanced", per_pair=2))
    assert result.mean == 0.5 and result.sem == 0.0 and result.position_bias == 1.0


def test_a_judge_that_reads_the_answers_has_no_position_bias(many_pairs):
    for order in ("random", "counterbalanced"):
        result = win_rate(judged(many_pairs, "good", order, per_pair=10))
        assert result.mean == 1.0
        assert result.position_bias == pytest.approx(0.0, abs=0.15)


def test_unreadable_replies_are_counted_not_scored(many_pairs):
    result = win_rate(judged(many_pairs, "mumble", "random", per_pair=1))
    assert result.count == 0 and result.unreadable == 12 and math.isnan(result.mean)


def test_logprob_judging_asks_for_both_letters(many_pairs):
    judge = make_judge("unused", "logprobs")
    contender, baseline = answered(many_pairs, 1, "GOOD"), answered(many_pairs, 1, "plain")
    judgements = judge_answers(contender, baseline, many_pairs, judge, "Q_1", "random", seed=0)
    assert judge.backend.prompts == 2 * len(many_pairs)  # one log p('A') and one log p('B') each
    assert all(j.first_position_picks == [True] for j in judgements)  # the stub prefers A


def test_order_is_reproducible_from_the_seed(many_pairs):
    first = [j.shown_first for j in judged(many_pairs, "first", "random", per_pair=3, seed=7)]
    again = [j.shown_first for j in judged(many_pairs, "first", "random", per_pair=3, seed=7)]
    other = [j.shown_first for j in judged(many_pairs, "first", "random", per_pair=3, seed=8)]
    assert first == again != other


def test_judgement_keeps_pair_length_and_label(many_pairs):
    judgements = judged(many_pairs, "good", "counterbalanced", per_pair=3)
    assert [j.target_turns for j in judgements[:3]] == [1, 2, 3]
    assert all(
        j.contender == "Q_1" and j.shown_first == ("contender", "baseline") for j in judgements
    )
    assert Judgement.from_json(judgements[0].to_json()) == judgements[0]


def test_judge_prompt_shows_persona_task_and_both_answers(dataset):
    pair = dataset.pairs("test")[0]
    backend = ScriptedJudge("first")
    seen = []
    backend.generate = lambda chats, params: seen.extend(chats) or [["A"]] * len(chats)
    Judge(backend, get_template("judge"), SamplingParams(), "generate").pick(
        [pair.persona], [pair.task.text], ["one"], ["two"]
    )
    system, user = seen[0][0]["content"], seen[0][-1]["content"]
    assert pair.persona.description in system
    assert pair.task.text in user and user.index("one") < user.index("two")


def test_position_bias_in_random_order_from_first_position_share():
    def j(first, verdict):
        return Judgement("t", "p", 0, 1, "Q_1", (first,), (verdict,))

    # the judge picked position A in 3 of 4: bias |2 * 0.75 - 1| = 0.5
    judgements = [
        j("contender", "contender"),
        j("baseline", "baseline"),
        j("contender", "contender"),
        j("contender", "baseline"),
    ]
    assert position_bias(judgements) == pytest.approx(0.5)


def test_random_personas_never_the_pairs_own(dataset):
    pairs = dataset.pairs("test")
    mapping = random_personas(pairs, seed=0)
    assert set(mapping) == {p.pair_id for p in pairs}
    assert all(mapping[p.pair_id].persona_id != p.persona.persona_id for p in pairs)
    assert {m.persona_id for m in mapping.values()} <= {p.persona.persona_id for p in pairs}
    assert random_personas(pairs, seed=0) == mapping
    with pytest.raises(ValueError, match="at least 2 test personas"):
        random_personas([pairs[0]], seed=0)


def test_persona_gap_share():
    negative = {"a": -10.0, "b": -20.0, "c": -30.0}
    positive = {"a": -6.0, "b": -16.0, "c": -26.0}
    experimental = {"a": -8.0, "b": -18.0, "c": -28.0}
    share, sem = persona_gap_share(experimental, negative, positive)
    assert share == pytest.approx(0.5) and sem == pytest.approx(0.0)
    share, _ = persona_gap_share(negative, negative, positive)
    assert share == 0.0
    share, _ = persona_gap_share(experimental, negative, negative)
    assert math.isnan(share)  # no gap to close


def test_mean_sem():
    mean, sem = mean_sem([1.0, 2.0, 3.0, 4.0])
    assert mean == 2.5 and sem == pytest.approx(
        math.sqrt(5 / 3) / 2
    )  # stdev 1.2909944 over sqrt(4)
    mean, sem = mean_sem([7.0])
    assert mean == 7.0 and math.isnan(sem)
