"""Scoring: gold log-prob under the task repeated after the conversation, and the two controls."""

from __future__ import annotations

from dataclasses import replace

import pytest

from star_gate.backends.fake import FakeBackend
from star_gate.data.records import Conversation
from star_gate.roles import views
from star_gate.roles.prompts import FINAL_CUE
from star_gate.stages import (
    conversation_prefixes,
    question_gains,
    score_controls,
    score_conversations,
)
from star_gate.stages.score import (
    gold_address,
    score_controls_after_address,
    score_conversations_after_address,
)


def conversations(pairs, answers=("I grew up in Cork.", "I love jazz.")):
    out = []
    for pair in pairs:
        for i, answer in enumerate(answers):
            c = Conversation(
                pair.task.task_id, pair.persona.persona_id, sample_index=i, target_turns=1
            )
            out.append(
                c.with_turn("questioner", "Tell me about you?").with_turn("roleplayer", answer)
            )
    return out


def test_scores_use_scoring_chat_in_one_call(dataset, recording):
    pairs = dataset.pairs("A")
    convs = conversations(pairs)
    scorer = recording(FakeBackend())
    scored = score_conversations(convs, pairs, scorer)
    ((name, chats, completions),) = scorer.calls
    assert name == "logprobs"
    by_id = {p.pair_id: p for p in pairs}
    assert chats == [views.scoring_chat(by_id[c.pair_id].task.text, c) for c in convs]
    assert completions == [by_id[c.pair_id].gold.text for c in convs]
    for chat, c in zip(chats, convs):  # the task is repeated after the conversation
        task = by_id[c.pair_id].task.text
        assert chat[-1]["content"].endswith(FINAL_CUE.format(task=task))
        assert chat[-1]["content"].startswith(c.answers[-1])
    assert [c.replace(logprob=None) for c in scored] == convs
    assert scored[0].logprob == FakeBackend().logprobs(chats[:1], completions[:1])[0]


def test_revealing_answers_score_higher_with_the_fake(dataset):
    pairs = dataset.pairs("A")[:1]  # (t1, p1): the gold names "Aoife"
    convs = conversations(pairs, answers=("I am Aoife.", "No comment."))
    revealing, silent = score_conversations(convs, pairs, FakeBackend())
    assert revealing.logprob > silent.logprob


def test_scores_on_tiny_model_match_backend(dataset, tiny_backend):
    pairs = dataset.pairs("test")
    convs = conversations(pairs)
    scored = score_conversations(convs, pairs, tiny_backend)
    by_id = {p.pair_id: p for p in pairs}
    direct = [
        tiny_backend.logprobs(
            [views.scoring_chat(by_id[c.pair_id].task.text, c)], [by_id[c.pair_id].gold.text]
        )[0]
        for c in convs
    ]
    assert [c.logprob for c in scored] == pytest.approx(direct, abs=1e-4)


def test_controls(dataset, recording):
    pairs = dataset.pairs("test")
    scorer = recording(FakeBackend())
    controls = score_controls(pairs, scorer)
    assert len(scorer.calls) == 1
    assert [(c.task_id, c.persona_id, c.condition) for c in controls] == [
        (p.task.task_id, p.persona.persona_id, cond)
        for cond in ("negative", "positive")
        for p in pairs
    ]
    _, chats, golds = scorer.calls[0]
    n = len(pairs)
    assert chats[:n] == [views.negative_control_chat(p.task.text) for p in pairs]
    assert chats[n:] == [views.positive_control_chat(p.task.text, p.persona) for p in pairs]
    assert golds == [p.gold.text for p in pairs] * 2
    # the persona names the user, whom each gold addresses: the positive control scores higher
    for neg, pos in zip(controls[:n], controls[n:]):
        assert pos.logprob > neg.logprob


# -- what each question adds -------------------------------------------------------------------------


def three_questions(pair, sample_index=0, asked=3):
    c = Conversation(pair.task.task_id, pair.persona.persona_id, sample_index, target_turns=asked)
    for q in range(asked):
        c = c.with_turn("questioner", f"Question {q}?").with_turn("roleplayer", f"Answer {q}.")
    return c


def test_prefixes_cut_before_each_answered_question(dataset):
    pair = dataset.pairs("A")[0]
    whole = three_questions(pair).replace(logprob=-5.0, response="Done.")
    prefixes = conversation_prefixes([whole])
    assert [len(p.turns) for p in prefixes] == [0, 2, 4]  # none asked, then 1, then 2 questions
    assert all(p.turns == whole.turns[: len(p.turns)] for p in prefixes)
    assert all(p.logprob is None and p.response is None for p in prefixes)
    assert all((p.pair_id, p.sample_index) == (whole.pair_id, 0) for p in prefixes)


def test_question_gains_add_up_to_the_whole_conversations_gain(dataset):
    pairs = dataset.pairs("A")
    scorer = FakeBackend()
    convs = [three_questions(p, i, asked=1 + i) for p in pairs[:2] for i in range(3)]
    scored = score_conversations(convs, pairs, scorer)
    prefixes = score_conversations(conversation_prefixes(scored), pairs, scorer)
    gains = question_gains(scored, prefixes)
    assert len(gains) == sum(len(c.answers) for c in convs) == 2 * (1 + 2 + 3)
    for c in scored:
        mine = [g for g in gains if (g.pair_id, g.sample_index) == (c.pair_id, c.sample_index)]
        assert [g.question for g in mine] == list(range(1, len(c.answers) + 1))
        empty = score_conversations([c.replace(turns=())], pairs, scorer)[0].logprob
        assert sum(g.gain for g in mine) == pytest.approx(c.logprob - empty)


def test_gold_address_is_the_opening_name_and_comma(dataset):
    pair = dataset.pairs("A")[0]  # gold "Aoife, here is my answer ..."
    assert gold_address(pair) == "Aoife,"
    by_surname = replace(pair, persona=replace(pair.persona, name="Brennan Aoife"))
    assert gold_address(by_surname) == "Aoife,"  # any part of the name
    unnamed = replace(pair, gold=replace(pair.gold, text="Start small, then grow."))
    assert gold_address(unnamed) == ""
    long_head = replace(pair, gold=replace(pair.gold, text="If Aoife likes tea and cake, fine."))
    assert gold_address(long_head) == ""  # a clause that mentions the name is no address


def test_after_address_leaves_the_name_unscored(dataset):
    pairs = dataset.pairs("A")[:1]
    convs = conversations(pairs, answers=("I am Aoife.", "No comment."))
    full = score_conversations(convs, pairs, FakeBackend())
    rest = score_conversations_after_address(convs, pairs, FakeBackend())
    # the fake charges 1 per word seen in the chat, 3 per unseen word: "Aoife," costs 1 or 3
    assert [f.logprob - r.logprob for f, r in zip(full, rest)] == [-1.0, -3.0]
    assert rest[0].logprob - rest[1].logprob == full[0].logprob - full[1].logprob - 2.0
    assert [r.replace(logprob=None) for r in rest] == convs


def test_pairs_without_an_address_score_the_whole_gold(dataset):
    pairs = [replace(p, gold=replace(p.gold, text="Start small.")) for p in dataset.pairs("A")]
    convs = conversations(pairs)
    scorer = FakeBackend()
    full = score_conversations(convs, pairs, scorer)
    assert score_conversations_after_address(convs, pairs, scorer) == full
    assert scorer.calls["logprobs"] == 2  # nothing to subtract: no second call


def test_controls_after_address(dataset):
    pairs = dataset.pairs("A")
    full = score_controls(pairs, FakeBackend())
    rest = score_controls_after_address(pairs, FakeBackend())
    assert [(c.pair_id, c.condition) for c in rest] == [(c.pair_id, c.condition) for c in full]
    for f, r in zip(full, rest):  # the name is in the positive control's persona, not the task
        assert f.logprob - r.logprob == (-1.0 if f.condition == "positive" else -3.0)
