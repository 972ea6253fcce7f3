"""Players: batched, order-preserving, one backend call per batch, each seeing its own view."""

from __future__ import annotations

from star_gate.backends.base import SamplingParams
from star_gate.data.records import Conversation, Persona
from star_gate.roles import views
from star_gate.roles.players import (
    GroundedRoleplayer,
    PersonaRoleplayer,
    Questioner,
    continued,
    first_paragraph,
)
from star_gate.roles.prompts import QUESTIONER_FEWSHOT, ROLEPLAYER_GROUNDED, ROLEPLAYER_PERSONA

PERSONAS = [
    Persona("p1", "Ann", "I grew up in Cork. I work as a nurse. I love hiking."),
    Persona("p2", "Bo", "I grew up in Oslo. I work as a chef. I love jazz."),
]
TASKS = ["Plan a trip.", "Suggest a film."]


class CannedBackend:
    """Replies with a fixed text per call; records chats and params."""

    name = "canned"

    def __init__(self, reply: str):
        self.reply = reply
        self.calls = []

    def generate(self, chats, params):
        self.calls.append((chats, params))
        return [[f"#{i} {self.reply}"] * params.n for i in range(len(chats))]


class StubRetriever:
    """Picks facts containing a keyword of the question (first m otherwise)."""

    def top_facts(self, question, facts, m):
        words = [w.strip("?.,!") for w in question.split() if len(w) > 3]
        hits = [f for f in facts if any(w in f for w in words)]
        return (hits or list(facts))[:m]


def asked(questions: list[str]) -> list[Conversation]:
    return [
        Conversation(task_id=f"t{i}", persona_id=f"p{i}", sample_index=0, target_turns=1).with_turn(
            "questioner", q
        )
        for i, q in enumerate(questions, start=1)
    ]


def test_first_paragraph():
    assert (
        first_paragraph("  Where did you grow up?\n\nUser: Cork\n\nmore")
        == "Where did you grow up?"
    )
    assert first_paragraph("one line\nsecond line") == "one line\nsecond line"
    assert first_paragraph("") == ""


def test_an_opening_and_its_continuation_join_as_one_turn():
    assert continued("Could you tell me", "what you like?") == "Could you tell me what you like?"
    assert continued("Who am I talking to", "?") == "Who am I talking to?"
    assert continued("Tell me about you", ", please.") == "Tell me about you, please."
    assert continued("", "What do you like?") == "What do you like?"
    assert continued("Could you", "") == "Could you"


def test_questioner_asks_in_one_call_with_its_own_view():
    backend = CannedBackend("What do you like?\n\nUser: I like")
    params = SamplingParams(n=4, temperature=0.9, top_p=0.9, max_new_tokens=12)
    q = Questioner(backend, QUESTIONER_FEWSHOT, params)
    empty = [
        Conversation(task_id="t", persona_id="p", sample_index=i, target_turns=1) for i in range(2)
    ]
    assert q.ask(TASKS, empty, seed=7) == ["#0 What do you like?", "#1 What do you like?"]
    ((chats, used),) = backend.calls
    assert chats == [views.questioner_chat(QUESTIONER_FEWSHOT, t, c) for t, c in zip(TASKS, empty)]
    assert used == SamplingParams(n=1, temperature=0.9, top_p=0.9, max_new_tokens=12, seed=7)


def test_questioner_responds_greedily_after_the_final_cue():
    backend = CannedBackend("Go hiking.  \n")
    q = Questioner(backend, QUESTIONER_FEWSHOT, SamplingParams(temperature=0.9))
    convs = asked(["Where?", "When?"])
    convs = [c.with_turn("roleplayer", "Cork.") for c in convs]
    assert q.respond(TASKS, convs, max_new_tokens=99) == ["#0 Go hiking.", "#1 Go hiking."]
    ((chats, used),) = backend.calls
    assert chats == [
        views.final_answer_chat(QUESTIONER_FEWSHOT, t, c) for t, c in zip(TASKS, convs)
    ]
    assert used.temperature == 0.0 and used.max_new_tokens == 99 and used.n == 1


def test_persona_roleplayer_sees_persona_and_task():
    backend = CannedBackend("I am a nurse.")
    rp = PersonaRoleplayer(backend, ROLEPLAYER_PERSONA, SamplingParams())
    convs = asked(["What is your job?", "What is your job?"])
    assert rp.answer(PERSONAS, TASKS, convs, seed=3) == ["#0 I am a nurse.", "#1 I am a nurse."]
    ((chats, used),) = backend.calls
    assert "I work as a nurse." in chats[0][0]["content"] and TASKS[0] in chats[0][0]["content"]
    assert "I work as a chef." in chats[1][0]["content"]
    assert chats[0][-1] == {"role": "user", "content": "What is your job?"}
    assert used.seed == 3 and used.n == 1


def test_grounded_roleplayer_sees_only_retrieved_facts():
    backend = CannedBackend("Answer")
    rp = GroundedRoleplayer(
        backend, ROLEPLAYER_GROUNDED, SamplingParams(), StubRetriever(), facts_per_answer=1
    )
    convs = asked(["Where did you grow up?", "What do you love?"])
    rp.answer(PERSONAS, TASKS, convs, seed=0)
    ((chats, _),) = backend.calls
    assert chats[0] == views.grounded_roleplayer_chat(
        ROLEPLAYER_GROUNDED, ["I grew up in Cork."], "Where did you grow up?"
    )
    assert (
        chats[1][-1]["content"] == "Facts about you:\n- I love jazz.\n\nQuestion: What do you love?"
    )
    assert all(chat[:-1] == ROLEPLAYER_GROUNDED.opening() for chat in chats)  # no persona, no task
    assert "nurse" not in chats[0][-1]["content"] and TASKS[0] not in chats[0][-1]["content"]


def test_verbatim_roleplayer_answers_with_facts_and_no_model():
    rp = GroundedRoleplayer(
        None,
        ROLEPLAYER_GROUNDED,
        SamplingParams(),
        StubRetriever(),
        facts_per_answer=2,
        verbatim=True,
    )
    answers = rp.answer(
        PERSONAS, TASKS, asked(["What work do you do?", "Where did you grow up?"]), seed=0
    )
    assert answers == ["I work as a nurse.", "I grew up in Oslo. I work as a chef."]


class ScriptedSamples:
    """Replies to call c with script[c][row], n times (samples within a call are alike)."""

    name = "scripted"

    def __init__(self, script):
        self.script, self.calls = script, []

    def generate(self, chats, params):
        self.calls.append((len(chats), params))
        replies = self.script[len(self.calls) - 1]
        return [[replies[i]] * params.n for i in range(len(chats))]


def test_ask_resamples_turns_that_ask_nothing_and_counts_the_rejections():
    backend = ScriptedSamples(
        [
            ["What do you like?", "Try a film.", "Go hiking."],  # row 0 asks at once
            ["Sure thing.", "Any favourite genre?"],  # round 1: row 2 still advises
            ["Why not Rome?"],  # round 2: row 2 proposes again; the bound is reached
        ]
    )
    questioner = Questioner(backend, QUESTIONER_FEWSHOT, SamplingParams(seed=3), ask_samples=5)
    conversations = asked(["", "", ""])
    questions, rejected = questioner.ask_counting(TASKS + ["Any plan?"], conversations, seed=3)
    assert questions == ["What do you like?", "Try a film.", "Any favourite genre?"]
    # row 1: its first sample, round 1's 4 and round 2's 1 ask nothing: the first one stays
    assert rejected == [0, 1 + 4 + 1, 1]
    assert [rows for rows, _ in backend.calls] == [3, 2, 1]
    assert [p.n for _, p in backend.calls] == [1, 4, 1]  # 4 + 1 = ask_samples
    assert len({p.seed for _, p in backend.calls}) == 3  # every round draws anew


def test_ask_without_ask_samples_keeps_the_first_sample():
    backend = ScriptedSamples([["Try a film.", "Go hiking."]])
    questioner = Questioner(backend, QUESTIONER_FEWSHOT, SamplingParams())
    assert questioner.ask_counting(TASKS, asked(["", ""]), seed=0) == (
        ["Try a film.", "Go hiking."],
        [0, 0],
    )
