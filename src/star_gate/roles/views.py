"""Map a conversation (stored with game roles) to the chat messages each role sees.

The questioner is the chat "assistant" and the roleplayer the "user" in the questioner's view;
the roleplayer's own view flips them. The persona appears only in the roleplayer's view (and the
positive control), never in the questioner's.
"""

from __future__ import annotations

from star_gate.data.records import Conversation, Persona
from star_gate.roles.prompts import (
    FINAL_CUE,
    JUDGE_POINTWISE_REQUEST,
    JUDGE_REQUEST,
    PERSONA_CONTEXT,
    PERSONA_REQUEST,
    RESPONDER,
    Message,
    PromptTemplate,
)


def _dialogue_as_assistant(conversation: Conversation) -> list[Message]:
    """Questions as assistant turns, answers as user turns."""
    role = {"questioner": "assistant", "roleplayer": "user"}
    return [{"role": role[t.speaker], "content": t.text} for t in conversation.turns]


def questioner_chat(
    template: PromptTemplate, task: str, conversation: Conversation
) -> list[Message]:
    """What the questioner sees when asking its next question."""
    return [
        *template.opening(),
        {"role": "user", "content": task},
        *_dialogue_as_assistant(conversation),
    ]


def opening_message(opening: str) -> list[Message]:
    """The start of the questioner's turn written for it, which its reply continues; none for ''."""
    return [{"role": "assistant", "content": opening}] if opening else []


def final_answer_chat(
    template: PromptTemplate, task: str, conversation: Conversation
) -> list[Message]:
    """The questioner's view with the task repeated after the last answer, asking for the answer.

    Used for the regularization response and the evaluation's final answers (with the template
    regularize.answer_prompt names, when set) and, with the questioner's own template, as the
    prompt of every training example.
    """
    return _with_final_cue(questioner_chat(template, task, conversation), task)


def scoring_chat(task: str, conversation: Conversation) -> list[Message]:
    """The prompt under which the frozen base model scores the gold response: log p(g | t, s)."""
    base = [
        *RESPONDER.opening(),
        {"role": "user", "content": task},
        *_dialogue_as_assistant(conversation),
    ]
    return _with_final_cue(base, task) if conversation.turns else base


def negative_control_chat(task: str) -> list[Message]:
    """log p(g | t): the task alone."""
    return [*RESPONDER.opening(), {"role": "user", "content": task}]


def positive_control_chat(task: str, persona: Persona) -> list[Message]:
    """log p(g | u, t): the persona written into the request."""
    content = PERSONA_CONTEXT.format(persona=persona.description, task=task)
    return [*RESPONDER.opening(), {"role": "user", "content": content}]


def _with_final_cue(messages: list[Message], task: str) -> list[Message]:
    cue = FINAL_CUE.format(task=task)
    if messages[-1]["role"] == "user":
        # Consecutive user turns confuse some chat templates: merge the cue into the last answer.
        last = messages[-1]
        return [*messages[:-1], {"role": "user", "content": f"{last['content']}\n\n{cue}"}]
    return [*messages, {"role": "user", "content": cue}]


def roleplayer_chat(
    template: PromptTemplate, persona: Persona, task: str, conversation: Conversation
) -> list[Message]:
    """What the persona roleplayer sees: its persona, the task, the dialogue so far, the question."""
    flipped = {"questioner": "user", "roleplayer": "assistant"}
    dialogue = [{"role": flipped[t.speaker], "content": t.text} for t in conversation.turns]
    return [*template.opening(persona=persona.description, task=task), *dialogue]


def grounded_roleplayer_chat(
    template: PromptTemplate, facts: list[str], question: str
) -> list[Message]:
    """What the grounded roleplayer sees: only the retrieved facts and the current question."""
    listed = "\n".join(f"- {fact}" for fact in facts)
    content = f"Facts about you:\n{listed}\n\nQuestion: {question}"
    return [*template.opening(), {"role": "user", "content": content}]


def oracle_chat(template: PromptTemplate, persona: Persona, task: str) -> list[Message]:
    """The oracle sees the whole persona and the task, no dialogue: it writes the gold answer."""
    return [*template.opening(persona=persona.description), {"role": "user", "content": task}]


def persona_writer_chat(template: PromptTemplate, first: Persona, second: Persona) -> list[Message]:
    """Two seed personas as examples, then a request for a new one."""
    request = PERSONA_REQUEST.format(first=first.description, second=second.description)
    return [*template.opening(), {"role": "user", "content": request}]


def judge_chat(
    template: PromptTemplate, persona: Persona, task: str, first: str, second: str
) -> list[Message]:
    """The judge reads the persona and the task, then two answers labelled A and B in that order."""
    request = JUDGE_REQUEST.format(task=task, first=first, second=second)
    return [*template.opening(persona=persona.description), {"role": "user", "content": request}]


def judge_pointwise_chat(
    template: PromptTemplate, persona: Persona, task: str, answer: str
) -> list[Message]:
    """The pointwise judge reads the persona and the task, then one answer: does it fit?"""
    request = JUDGE_POINTWISE_REQUEST.format(task=task, answer=answer)
    return [*template.opening(persona=persona.description), {"role": "user", "content": request}]
