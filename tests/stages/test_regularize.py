"""Regularization: the previous policy's greedy answer (paper), or none, or the gold."""

from __future__ import annotations

import pytest

from star_gate.backends.base import SamplingParams
from star_gate.backends.fake import FakeBackend
from star_gate.data.records import Conversation
from star_gate.roles import views
from star_gate.roles.players import Questioner
from star_gate.roles.prompts import QUESTIONER_FEWSHOT
from star_gate.stages import regularize


def kept(pairs):
    return [
        Conversation(
            p.task.task_id, p.persona.persona_id, sample_index=0, target_turns=1, logprob=-1.0
        )
        .with_turn("questioner", "What do you enjoy?")
        .with_turn("roleplayer", f"I am {p.persona.name}.")
        for p in pairs
    ]


def test_policy_mode_answers_greedily_in_one_call(dataset, recording):
    pairs = dataset.pairs("A")
    convs = kept(pairs)
    backend = recording(FakeBackend())
    policy = Questioner(
        backend, QUESTIONER_FEWSHOT, SamplingParams(temperature=0.9, max_new_tokens=8)
    )
    out = regularize(convs, pairs, policy, "policy", max_new_tokens=77)
    ((_, chats, params),) = backend.calls
    assert chats == [
        views.final_answer_chat(QUESTIONER_FEWSHOT, p.task.text, c) for p, c in zip(pairs, convs)
    ]
    assert params.temperature == 0.0 and params.max_new_tokens == 77 and params.n == 1
    assert all(c.response.startswith("Here is my tailored answer") for c in out)
    assert [c.replace(response=None) for c in out] == convs  # nothing else changes


def test_policy_mode_matches_conversations_to_their_own_task(dataset, recording):
    pairs = dataset.pairs("A")
    convs = kept(pairs)[::-1]  # order differs from the pairs
    backend = recording(FakeBackend())
    regularize(convs, pairs, Questioner(backend, QUESTIONER_FEWSHOT, SamplingParams()), "policy")
    by_id = {p.pair_id: p for p in pairs}
    ((_, chats, _),) = backend.calls
    assert [chat[-1]["content"].rsplit(": ", 1)[1] for chat in chats] == [
        by_id[c.pair_id].task.text for c in convs
    ]


def test_none_mode_has_no_final_answer(dataset):
    pairs = dataset.pairs("A")
    convs = [c.replace(response="stale") for c in kept(pairs)]
    assert all(c.response is None for c in regularize(convs, pairs, None, "none"))


def test_gold_mode_appends_the_gold(dataset):
    pairs = dataset.pairs("B")
    out = regularize(kept(pairs), pairs, None, "gold")
    assert [c.response for c in out] == [p.gold.text for p in pairs]


def test_policy_mode_needs_a_policy(dataset):
    pairs = dataset.pairs("A")
    with pytest.raises(ValueError, match="needs the previous policy"):
        regularize(kept(pairs), pairs, None, "policy")


class AsksAgainWhenGreedy:
    """Greedy final answers ask another question; sampled ones answer only from the second sample on."""

    name = "asks-again"

    def __init__(self):
        self.calls = []

    def generate(self, chats, params):
        self.calls.append(params)
        if params.temperature == 0:
            return [["And what else do you like?"] * params.n for _ in chats]
        return [
            ["Why?"]
            + [f"Try the riverside trail this weekend, sample {i}." for i in range(1, params.n)]
            for _ in chats
        ]

    def logprobs(self, chats, completions):
        return [0.0] * len(chats)


@pytest.mark.parametrize("samples", [0, 1, 3])
def test_answer_samples_replace_a_greedy_non_answer_with_the_first_sampled_answer(dataset, samples):
    pairs = dataset.pairs("A")
    backend = AsksAgainWhenGreedy()
    policy = Questioner(
        backend,
        QUESTIONER_FEWSHOT,
        SamplingParams(),
        answer_samples=samples,
        answer_temperature=0.8,
    )
    answers = [
        c.response for c in regularize(kept(pairs), pairs, policy, "policy", max_new_tokens=20)
    ]
    if samples < 2:  # none drawn, or only the one that asks "Why?": the greedy answer stays
        assert answers == ["And what else do you like?"] * len(pairs)
        assert len(backend.calls) == (1 if samples == 0 else 2)
    else:
        assert answers == ["Try the riverside trail this weekend, sample 1."] * len(pairs)
        extra = backend.calls[1]
        assert (extra.n, extra.temperature, extra.max_new_tokens) == (samples, 0.8, 20)


class AnswersLate:
    """Greedy answers ask again; sampled ones answer for the first task at once, for the others only
    from the round seeded 2 on."""

    name = "answers-late"

    def __init__(self, first_task: str):
        self.first_task = first_task
        self.calls = []

    def generate(self, chats, params):
        self.calls.append((params, len(chats)))
        if params.temperature == 0:
            return [["What else?"] * params.n for _ in chats]
        return [
            [f"Here is my answer, round {params.seed}."] * params.n
            if params.seed >= 2 or self.first_task in str(chat)
            else ["Which one?"] * params.n
            for chat in chats
        ]

    def logprobs(self, chats, completions):
        return [0.0] * len(chats)


@pytest.mark.parametrize("samples", [8, 10])
def test_answer_samples_come_in_rounds_for_the_answers_still_missing(dataset, samples):
    pairs = dataset.pairs("A")
    backend = AnswersLate(pairs[0].task.text)
    policy = Questioner(backend, QUESTIONER_FEWSHOT, SamplingParams(), answer_samples=samples)
    answers = [
        c.response for c in regularize(kept(pairs), pairs, policy, "policy", max_new_tokens=20)
    ]
    rounds = [(params.seed, params.n, rows) for params, rows in backend.calls[1:]]
    first = [p.task.text == pairs[0].task.text for p in pairs]
    others = first.count(False)
    late = "What else?" if samples == 8 else "Here is my answer, round 2."
    assert answers == ["Here is my answer, round 0." if f else late for f in first]
    if samples == 8:  # two rounds of 4, seeds 0 and 1: only the first task's answers are fixed
        assert rounds == [(0, 4, len(pairs)), (1, 4, others)]
    else:  # a third round, of the 2 samples left, seeded 2, fixes the rest
        assert rounds == [(0, 4, len(pairs)), (1, 4, others), (2, 2, others)]


def test_answer_samples_leave_answers_alone(dataset):
    pairs = dataset.pairs("A")
    backend = FakeBackend()  # its final answers answer
    policy = Questioner(backend, QUESTIONER_FEWSHOT, SamplingParams(), answer_samples=4)
    regularize(kept(pairs), pairs, policy, "policy", max_new_tokens=20)
    assert backend.calls["generate"] == 1


def test_a_conversation_the_questioner_ended_keeps_its_own_answer(dataset):
    from star_gate.backends.base import SamplingParams
    from star_gate.backends.fake import FakeBackend
    from star_gate.data.records import Conversation
    from star_gate.roles.players import Questioner
    from star_gate.roles.prompts import QUESTIONER_FEWSHOT
    from star_gate.stages import regularize

    pairs = dataset.pairs("A")[:2]
    ended = Conversation(pairs[0].task.task_id, pairs[0].persona.persona_id, 0, 3, response="Mine.")
    open_ = (
        Conversation(pairs[1].task.task_id, pairs[1].persona.persona_id, 0, 1)
        .with_turn("questioner", "Q?")
        .with_turn("roleplayer", "A.")
    )
    policy = Questioner(FakeBackend(), QUESTIONER_FEWSHOT, SamplingParams(max_new_tokens=8))
    out = regularize([ended, open_], pairs, policy, "policy", max_new_tokens=8)
    assert out[0].response == "Mine." and out[1].response not in (None, "Mine.")
