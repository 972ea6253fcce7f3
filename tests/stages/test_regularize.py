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
