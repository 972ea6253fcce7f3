"""Each role's view of a conversation: who is "assistant", what each role sees."""

from __future__ import annotations

from star_gate.data.records import Conversation, Persona
from star_gate.roles import views
from star_gate.roles.prompts import FINAL_CUE, QUESTIONER_FEWSHOT, RESPONDER, ROLEPLAYER_PERSONA

TASK = "Plan a weekend trip for me."
PERSONA = Persona("p1", "Ann", "My name is Ann. I grew up in Cork. I love hiking.")


def conversation(turns: int = 2) -> Conversation:
    c = Conversation(task_id="t", persona_id="p1", sample_index=0, target_turns=turns)
    for i in range(turns):
        c = c.with_turn("questioner", f"Question {i}?").with_turn("roleplayer", f"Answer {i}.")
    return c


def test_questioner_chat_maps_questions_to_assistant():
    chat = views.questioner_chat(QUESTIONER_FEWSHOT, TASK, conversation())
    opening = QUESTIONER_FEWSHOT.opening()
    assert chat[: len(opening)] == opening
    assert chat[len(opening) :] == [
        {"role": "user", "content": TASK},
        {"role": "assistant", "content": "Question 0?"},
        {"role": "user", "content": "Answer 0."},
        {"role": "assistant", "content": "Question 1?"},
        {"role": "user", "content": "Answer 1."},
    ]


def test_final_answer_chat_repeats_task_after_conversation():
    chat = views.final_answer_chat(QUESTIONER_FEWSHOT, TASK, conversation())
    cue = FINAL_CUE.format(task=TASK)
    # merged into the last answer: no two user turns in a row
    assert chat[-1] == {"role": "user", "content": f"Answer 1.\n\n{cue}"}
    assert len(chat) == len(views.questioner_chat(QUESTIONER_FEWSHOT, TASK, conversation()))


def test_final_cue_is_its_own_turn_after_an_assistant_turn():
    c = conversation(1).with_turn("questioner", "One more?")
    chat = views.final_answer_chat(QUESTIONER_FEWSHOT, TASK, c)
    assert chat[-2] == {"role": "assistant", "content": "One more?"}
    assert chat[-1] == {"role": "user", "content": FINAL_CUE.format(task=TASK)}


def test_scoring_chat_uses_responder_and_repeats_task():
    chat = views.scoring_chat(TASK, conversation())
    assert chat[0] == RESPONDER.opening()[0]
    assert chat[1] == {"role": "user", "content": TASK}
    assert chat[-1]["content"].endswith(FINAL_CUE.format(task=TASK))
    assert [m["content"] for m in chat[2:4]] == ["Question 0?", "Answer 0."]


def test_scoring_chat_without_turns_is_the_negative_control():
    empty = Conversation(task_id="t", persona_id="p1", sample_index=0, target_turns=1)
    assert views.scoring_chat(TASK, empty) == views.negative_control_chat(TASK)


def test_persona_only_in_roleplayer_view_and_positive_control():
    c = conversation()
    hidden = [
        views.questioner_chat(QUESTIONER_FEWSHOT, TASK, c),
        views.final_answer_chat(QUESTIONER_FEWSHOT, TASK, c),
        views.scoring_chat(TASK, c),
        views.negative_control_chat(TASK),
    ]
    for chat in hidden:
        assert all("Cork" not in m["content"] for m in chat)
    assert "I grew up in Cork" in views.positive_control_chat(TASK, PERSONA)[-1]["content"]
    assert (
        "I grew up in Cork"
        in views.roleplayer_chat(ROLEPLAYER_PERSONA, PERSONA, TASK, c)[0]["content"]
    )


def test_roleplayer_chat_flips_roles():
    c = conversation(1).with_turn("questioner", "Question 1?")
    chat = views.roleplayer_chat(ROLEPLAYER_PERSONA, PERSONA, TASK, c)
    assert chat[1:] == [
        {"role": "user", "content": "Question 0?"},
        {"role": "assistant", "content": "Answer 0."},
        {"role": "user", "content": "Question 1?"},
    ]


def test_grounded_roleplayer_chat_sees_only_facts_and_question():
    from star_gate.roles.prompts import ROLEPLAYER_GROUNDED

    chat = views.grounded_roleplayer_chat(
        ROLEPLAYER_GROUNDED, ["I grew up in Cork."], "Where did you grow up?"
    )
    assert chat[-1] == {
        "role": "user",
        "content": "Facts about you:\n- I grew up in Cork.\n\nQuestion: Where did you grow up?",
    }
    assert chat[:-1] == ROLEPLAYER_GROUNDED.opening()
