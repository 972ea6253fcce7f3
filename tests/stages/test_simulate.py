"""Simulation: counts, lengths, turn order, information flow, batching and seeding."""

from __future__ import annotations

from collections import Counter

import pytest

from star_gate.backends.base import SamplingParams
from star_gate.backends.fake import FakeBackend
from star_gate.roles.players import PersonaRoleplayer, Questioner
from star_gate.roles.prompts import QUESTIONER_FEWSHOT, ROLEPLAYER_PERSONA
from star_gate.stages import simulate


def players(recording, questioner_backend=None, roleplayer_backend=None):
    q_backend = recording(questioner_backend or FakeBackend("questioner"))
    r_backend = recording(roleplayer_backend or FakeBackend("roleplayer"))
    questioner = Questioner(
        q_backend, QUESTIONER_FEWSHOT, SamplingParams(temperature=0.9, max_new_tokens=8)
    )
    roleplayer = PersonaRoleplayer(
        r_backend, ROLEPLAYER_PERSONA, SamplingParams(temperature=0.7, max_new_tokens=8)
    )
    return questioner, roleplayer, q_backend, r_backend


def test_count_order_and_turn_structure(dataset, recording):
    pairs = dataset.pairs("A")
    questioner, roleplayer, _, _ = players(recording)
    out = simulate(pairs, questioner, roleplayer, conversations_per_pair=3, max_turns=3, seed=1)
    assert len(out) == len(pairs) * 3
    assert [(c.pair_id, c.sample_index) for c in out] == [
        (p.pair_id, s) for p in pairs for s in range(3)
    ]
    for c in out:
        assert 1 <= c.target_turns <= 3
        assert [t.speaker for t in c.turns] == ["questioner", "roleplayer"] * c.target_turns
        assert c.is_finished and c.logprob is None and c.response is None
        assert c.roleplayer_persona_id == c.persona_id


def test_lengths_are_roughly_uniform(dataset, recording):
    questioner, roleplayer, _, _ = players(recording)
    out = simulate(
        dataset.pairs("A"), questioner, roleplayer, conversations_per_pair=150, max_turns=3, seed=0
    )
    counts = Counter(len(c.answers) for c in out)
    assert set(counts) == {1, 2, 3}
    expected = len(out) / 3  # 200 each; 5 SDs of a binomial(600, 1/3) is about 58
    assert all(abs(n - expected) < 58 for n in counts.values()), counts


def test_one_generate_call_per_player_per_turn(dataset, recording):
    pairs = dataset.pairs("A")
    questioner, roleplayer, q_backend, r_backend = players(recording)
    out = simulate(pairs, questioner, roleplayer, conversations_per_pair=5, max_turns=3, seed=3)
    turns = max(c.target_turns for c in out)
    live_per_turn = [sum(c.target_turns > turn for c in out) for turn in range(turns)]
    assert live_per_turn[0] == len(out) and live_per_turn[-1] < len(out)  # some ended early
    for backend in (q_backend, r_backend):
        assert [name for name, _, _ in backend.calls] == ["generate"] * turns
        assert [len(chats) for _, chats, _ in backend.calls] == live_per_turn
    # sampling settings are passed through, one sample per live conversation, distinct seeds per
    # call
    q_params = [params for _, _, params in q_backend.calls]
    assert all(p.n == 1 and p.temperature == 0.9 for p in q_params)
    r_seeds = [params.seed for _, _, params in r_backend.calls]
    assert len({p.seed for p in q_params} | set(r_seeds)) == 2 * turns


def test_persona_never_reaches_the_questioner(dataset, recording):
    pairs = dataset.pairs("A") + dataset.pairs("B")
    questioner, roleplayer, q_backend, r_backend = players(recording)
    simulate(pairs, questioner, roleplayer, conversations_per_pair=2, max_turns=3, seed=5)
    descriptions = {p.persona.description for p in pairs}
    facts = {f for d in descriptions for f in d.split(". ")}
    names = {p.persona.name for p in pairs}
    questioner_text = "\n".join(
        m["content"] for _, chats, _ in q_backend.calls for chat in chats for m in chat
    )
    assert not any(f in questioner_text for f in facts | names)
    roleplayer_text = "\n".join(
        m["content"] for _, chats, _ in r_backend.calls for chat in chats for m in chat
    )
    assert all(d in roleplayer_text for d in descriptions)  # the check above is not vacuous


def test_questioner_sees_task_and_dialogue_roleplayer_sees_own_persona(dataset, recording):
    pairs = dataset.pairs("A")
    questioner, roleplayer, q_backend, r_backend = players(recording)
    out = simulate(pairs, questioner, roleplayer, conversations_per_pair=1, max_turns=2, seed=0)
    _, first_q, _ = q_backend.calls[0]
    _, first_r, _ = r_backend.calls[0]
    opening = len(QUESTIONER_FEWSHOT.opening())
    for pair, chat_q, chat_r, conv in zip(pairs, first_q, first_r, out):
        assert (
            chat_q[opening] == {"role": "user", "content": pair.task.text}
            and len(chat_q) == opening + 1
        )
        assert (
            pair.persona.description in chat_r[0]["content"]
            and pair.task.text in chat_r[0]["content"]
        )
        assert chat_r[-1] == {"role": "user", "content": conv.questions[0]}


def test_random_persona_control_uses_the_other_persona(dataset, recording):
    pairs = dataset.pairs("A")
    other = {p.pair_id: dataset.personas["p5"] for p in pairs}
    questioner, roleplayer, _, r_backend = players(recording)
    out = simulate(pairs, questioner, roleplayer, 1, 1, seed=0, roleplayer_personas=other)
    assert all(c.roleplayer_persona_id == "p5" and c.persona_id != "p5" for c in out)
    _, chats, _ = r_backend.calls[0]
    assert all(dataset.personas["p5"].description in chat[0]["content"] for chat in chats)


def test_same_seed_same_result_other_seed_differs(dataset, recording):
    pairs = dataset.pairs("A")
    runs = [
        simulate(pairs, *players(recording)[:2], conversations_per_pair=4, max_turns=3, seed=seed)
        for seed in (11, 11, 12)
    ]
    assert runs[0] == runs[1]
    assert runs[0] != runs[2]


def test_seeded_on_the_tiny_model(dataset, recording, tiny_backend):
    pairs = dataset.pairs("A")[:2]

    def run(seed):
        questioner, roleplayer, _, _ = players(recording, questioner_backend=tiny_backend)
        return simulate(
            pairs, questioner, roleplayer, conversations_per_pair=2, max_turns=2, seed=seed
        )

    first = run(4)
    assert run(4) == first
    assert [c.questions for c in run(5)] != [c.questions for c in first]


@pytest.mark.parametrize("max_turns", [1, 2])
def test_max_turns_bounds_lengths(dataset, recording, max_turns):
    out = simulate(
        dataset.pairs("B"),
        *players(recording)[:2],
        conversations_per_pair=20,
        max_turns=max_turns,
        seed=0,
    )
    assert {len(c.answers) for c in out} == set(range(1, max_turns + 1))


class ScriptedQuestioner:
    """Asks or answers by a script per (sample index, turn): 'ask' or 'answer'."""

    def __init__(self, script):
        self.script = script
        self.turn = 0

    def ask(self, tasks, conversations, seed):
        replies = []
        for c in conversations:
            move = self.script[c.sample_index][len(c.questions)]
            replies.append(
                f"What matters most to you, {c.sample_index}?"
                if move == "ask"
                else f"Here is my answer for you, number {c.sample_index}."
            )
        return replies


def test_stop_early_lets_the_questioner_end_by_answering(dataset, recording):
    pairs = dataset.pairs("A")[:1]
    _, roleplayer, _, r_backend = players(recording)
    script = {0: ["answer"], 1: ["ask", "answer"], 2: ["ask", "ask", "ask"]}
    out = simulate(
        pairs, ScriptedQuestioner(script), roleplayer, conversations_per_pair=3, max_turns=3,
        seed=0, stop_early=True,
    )  # fmt: skip
    assert [len(c.questions) for c in out] == [0, 1, 3]  # questions asked before stopping (max 3)
    assert [c.response for c in out] == [
        "Here is my answer for you, number 0.",
        "Here is my answer for you, number 1.",
        None,  # asked all three: no answer of its own; regularize writes one
    ]
    assert all(c.target_turns == 3 and c.is_finished for c in out)
    for c in out:  # every question has its answer, and the answer ending a conversation is no turn
        assert [t.speaker for t in c.turns] == ["questioner", "roleplayer"] * len(c.questions)
    # the roleplayer answered only the questions: 2 live at turn 1 of 3, then 1
    assert [len(chats) for _, chats, _ in r_backend.calls] == [2, 1, 1]


def test_without_stop_early_an_answer_is_just_a_turn(dataset, recording):
    pairs = dataset.pairs("A")[:1]
    _, roleplayer, _, _ = players(recording)
    out = simulate(pairs, ScriptedQuestioner({0: ["answer"] * 3}), roleplayer, 1, 3, seed=0)
    assert out[0].response is None and len(out[0].questions) == out[0].target_turns


def test_openings_start_the_first_question_of_their_sample_index_only(dataset, recording):
    pairs = dataset.pairs("A")
    questioner, roleplayer, q_backend, _ = players(recording)
    openings = ("", "Before I answer, could you tell me")
    out = simulate(pairs, questioner, roleplayer, 4, max_turns=2, seed=1, openings=openings)
    for c in out:
        first, *later = c.questions
        if c.sample_index % 2:
            assert first.startswith("Before I answer, could you tell me what about you")
        else:
            assert first.startswith("Question ")  # the questioner's own turn
        assert all(q.startswith("Question ") for q in later)  # later turns are its own
    first_turn_chats = q_backend.calls[0][1]
    ends = [chat[-1] for chat in first_turn_chats]
    assert sum(m["role"] == "assistant" for m in ends) == len(out) // 2
    assert {m["content"] for m in ends if m["role"] == "assistant"} == {openings[1]}


def test_openings_continue_on_the_tiny_model(dataset, recording, tiny_backend, tiny_tokenizer):
    """A real backend continues the opening: its prompt is the chat left open after it."""
    pairs = dataset.pairs("A")[:2]
    questioner, roleplayer, _, _ = players(recording, questioner_backend=tiny_backend)
    out = simulate(pairs, questioner, roleplayer, 2, max_turns=1, seed=0, openings=("Could",))
    assert all(c.questions[0].startswith("Could") for c in out)
    chat = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "Could"}]
    prompt = tiny_backend.encode_prompt(chat)
    assert tiny_tokenizer.decode(prompt).endswith("Could")


class NeverAsks:
    """A questioner backend whose every sample gives advice."""

    name = "never-asks"

    def generate(self, chats, params):
        return [["Try a long walk."] * params.n for _ in chats]


def test_conversations_count_the_samples_rejected_for_asking_nothing(dataset, recording):
    pairs = dataset.pairs("A")[:2]
    _, roleplayer, _, _ = players(recording)
    questioner = Questioner(NeverAsks(), QUESTIONER_FEWSHOT, SamplingParams(), ask_samples=6)
    out = simulate(pairs, questioner, roleplayer, conversations_per_pair=2, max_turns=2, seed=0)
    # each turn: its first sample and the 6 resampled ones ask nothing; the first one stays
    assert [c.rejected_questions for c in out] == [7 * c.target_turns for c in out]
    assert all(q == "Try a long walk." for c in out for q in c.questions)
