"""Every prompt the project sends, as named and versioned templates.

A config picks a template by name (`roles.questioner.prompt: questioner_fewshot`). Changing a
template's text must bump its version: the version is written into each run's manifest, so results
from different prompts are never mixed silently. Few-shot examples are chat messages placed between
the system prompt and the real conversation; they are how a 135M model learns the format at all.
"""

from __future__ import annotations

from dataclasses import dataclass

Message = dict[str, str]


@dataclass(frozen=True)
class PromptTemplate:
    name: str
    version: str
    system: str
    few_shot: tuple[tuple[str, str], ...] = ()  # (chat role, content), in order

    def opening(self, **fields: str) -> list[Message]:
        """System prompt (formatted with fields) followed by the few-shot messages."""
        messages = [{"role": "system", "content": self.system.format(**fields)}]
        messages += [{"role": role, "content": text} for role, text in self.few_shot]
        return messages


QUESTIONER_PLAIN = PromptTemplate(
    name="questioner_plain",
    version="1",
    system=(
        "You are a helpful assistant. Before answering a request, ask the user one short "
        "clarifying question about themselves, so that your final answer fits them. Ask exactly "
        "one question per turn. Answer the request only when the user asks you to."
    ),
)

# The worked examples teach the format: one question about the person, never the answer.
QUESTIONER_FEWSHOT = PromptTemplate(
    name="questioner_fewshot",
    version="1",
    system=QUESTIONER_PLAIN.system,
    few_shot=(
        ("user", "Recommend me a podcast for my commute."),
        ("assistant", "Happy to help! What topics do you enjoy reading or talking about most?"),
        ("user", "I like history and true stories about ordinary people."),
        (
            "assistant",
            "Good to know. How long is your commute, and do you prefer short episodes or long series?",
        ),
        (
            "user",
            (
                "About forty minutes by train, and I like series. Thank you. Now please answer my "
                "original request: Recommend me a podcast for my commute."
            ),
        ),
        (
            "assistant",
            (
                "Since you love history and real lives, try a narrative history series with "
                "episodes of about forty minutes, so each one fits your train ride."
            ),
        ),
        ("user", "Suggest a hobby I could pick up."),
        (
            "assistant",
            "Sure! How much free time do you have each week, and do you prefer being indoors or outdoors?",
        ),
    ),
)

# questioner_fewshot's first worked example, then one that asks who the user is (their name and how
# they spend their time) before answering: self-play can then find out whether questions about the
# person pay, which the 135M model almost never asks with questioner_fewshot (4 to 6 of 240 test
# questions mention a name). No example names anyone: the model would call every user by it.
# Measured on all 160 pairs of split B (benchmarks/question_ceiling.py): the bundled model still
# asks for a name in 1% of its conversations, so the demo does not use it.
QUESTIONER_PERSON = PromptTemplate(
    name="questioner_person",
    version="1",
    system=QUESTIONER_PLAIN.system,
    few_shot=QUESTIONER_FEWSHOT.few_shot[:-2]
    + (
        ("user", "Suggest a hobby I could pick up."),
        (
            "assistant",
            (
                "Sure! Before I suggest one, could you tell me a little about yourself: what is "
                "your name, and how do you like to spend your time?"
            ),
        ),
    ),
)

ROLEPLAYER_PERSONA = PromptTemplate(
    name="roleplayer_persona",
    version="1",
    system=(
        "You are role-playing this person:\n{persona}\n\n"
        'You asked an AI assistant: "{task}". The assistant will ask you questions. Answer each '
        "question in the first person, in one or two sentences, as this person, using only the "
        "facts above. Do not answer your own request and do not ask questions back.\n\n"
        "Example. Question: What do you do for work? Answer: I work as a night-shift nurse."
    ),
)

# Sees only the m persona facts most similar to the question, so it cannot drift from the persona.
ROLEPLAYER_GROUNDED = PromptTemplate(
    name="roleplayer_grounded",
    version="1",
    system=(
        "You are a person talking to an AI assistant. Answer its question in the first person, "
        "in one or two sentences, using only the facts given. Do not ask questions back."
    ),
    few_shot=(
        (
            "user",
            (
                "Facts about you:\n- I grew up in a fishing village near Bergen in Norway.\n"
                "- I work night shifts as a nurse.\n\nQuestion: Where did you grow up?"
            ),
        ),
        ("assistant", "I grew up in a small fishing village near Bergen, in Norway."),
        (
            "user",
            (
                "Facts about you:\n- I am vegetarian and allergic to peanuts.\n"
                "- I love spicy food.\n\nQuestion: What kind of food do you like?"
            ),
        ),
        ("assistant", "I love spicy food, but I am vegetarian and allergic to peanuts."),
    ),
)

# The final answer after a conversation (regularize.answer_prompt: questioner_answer): worked
# examples that end with the final cue and a direct, complete answer built on what the user said,
# never another question. Few-shot turns are formatted as views.final_answer_chat formats the real
# ones (the cue merged into the user's last answer).
QUESTIONER_ANSWER = PromptTemplate(
    name="questioner_answer",
    version="1",
    system=(
        "You are a helpful assistant. You have asked the user some questions about themselves. "
        "When the user asks you to answer their original request, answer it now: directly and "
        "completely, in a few sentences, using what they told you. Do not ask any more questions."
    ),
    few_shot=(
        ("user", "Recommend me a podcast for my commute."),
        ("assistant", "Happy to help! What topics do you enjoy reading or talking about most?"),
        (
            "user",
            (
                "I like history and true stories about ordinary people.\n\nThank you. Now please "
                "answer my original request: Recommend me a podcast for my commute."
            ),
        ),
        (
            "assistant",
            (
                "Since you love history and the lives of ordinary people, try a narrative history "
                "podcast that tells one true story per episode, such as a series on everyday life "
                "in past centuries. Start with its first season and listen in order on your "
                "commute."
            ),
        ),
        ("user", "Suggest a hobby I could pick up."),
        (
            "assistant",
            "Sure! How much free time do you have each week, and do you prefer being indoors or outdoors?",
        ),
        (
            "user",
            (
                "About five hours a week, and I like being outside.\n\n"
                "Thank you. Now please answer my original request: Suggest a hobby I could pick up."
            ),
        ),
        (
            "assistant",
            (
                "With five free hours a week and a love of the outdoors, take up hiking. Begin with "
                "a two-hour trail near home on a weekend, buy good walking shoes, and add a longer "
                "route each month as you get fitter."
            ),
        ),
    ),
)

# Used to score gold responses with the frozen base model and for the final answer.
RESPONDER = PromptTemplate(
    name="responder",
    version="1",
    system="You are a helpful assistant. Tailor your answer to the user.",
)

FINAL_CUE = "Thank you. Now please answer my original request: {task}"
PERSONA_CONTEXT = "Some information about me:\n{persona}\n\n{task}"

ORACLE = PromptTemplate(
    name="oracle",
    version="1",
    system=(
        "You write the ideal answer to a user's request, tailored to the user described below. Use "
        "what the description says; invent nothing about the user. Answer in 60 to 140 words.\n\n"
        "The user:\n{persona}"
    ),
)

JUDGE = PromptTemplate(
    name="judge",
    version="1",
    system=(
        "You compare two answers to a user's request. The user is described below. Decide which "
        "answer suits this user better. Reply with exactly 'A' or 'B'.\n\nThe user:\n{persona}"
    ),
)

# evaluate.judge_method pointwise: one answer at a time, so there is no position to prefer; the
# verdict compares log p('Yes') - log p('No') of two answers (JUDGE_POINTWISE_REQUEST).
JUDGE_POINTWISE = PromptTemplate(
    name="judge_pointwise",
    version="1",
    system=(
        "You judge whether an answer to a user's request suits this user. The user is described "
        "below. Reply with exactly 'Yes' or 'No'.\n\nThe user:\n{persona}"
    ),
)

# `star-gate data personas`: each call shows two seed personas as examples (as the paper did with
# GPT-4 and PRODIGy personas) and asks for one new person in the same form.
PERSONA_WRITER = PromptTemplate(
    name="persona_writer",
    version="1",
    system=(
        "You invent realistic, varied people for a study of personal assistants. Describe one new "
        "person in the first person, in 10 to 15 short sentences with one fact each: start with "
        "'My name is <full name> and I am <age> years old.', then where they live, where they grew "
        "up, their work, family, hobbies, tastes, values, a constraint (money, time, health) and a "
        "quirk. The person must clearly differ from the examples."
    ),
)
PERSONA_REQUEST = (
    "Here are two example people.\n\nExample 1:\n{first}\n\nExample 2:\n{second}\n\n"
    "Now describe a new, different person."
)

JUDGE_REQUEST = (
    "My request: {task}\n\nAnswer A:\n{first}\n\nAnswer B:\n{second}\n\n"
    "Which answer suits me better? Reply with A or B."
)

JUDGE_POINTWISE_REQUEST = (
    "My request: {task}\n\nAnswer:\n{answer}\n\nDoes this answer fit me? Reply Yes or No."
)

TEMPLATES: dict[str, PromptTemplate] = {
    t.name: t
    for t in (
        QUESTIONER_PLAIN,
        QUESTIONER_FEWSHOT,
        QUESTIONER_PERSON,
        QUESTIONER_ANSWER,
        ROLEPLAYER_PERSONA,
        ROLEPLAYER_GROUNDED,
        RESPONDER,
        ORACLE,
        JUDGE,
        JUDGE_POINTWISE,
        PERSONA_WRITER,
    )
}


# The template each use takes when its role's config names none (prompt: "").
DEFAULT_PROMPTS: dict[str, str] = {
    "questioner": "questioner_fewshot",
    "roleplayer_persona": "roleplayer_persona",
    "roleplayer_grounded": "roleplayer_grounded",
    "judge": "judge",
    "judge_pointwise": "judge_pointwise",
    "oracle": "oracle",
}


def template_for(use: str, configured: str = "") -> PromptTemplate:
    """The template a config names for this use (a DEFAULT_PROMPTS key), or the use's default."""
    return get_template(configured or DEFAULT_PROMPTS[use])


def get_template(name: str) -> PromptTemplate:
    try:
        return TEMPLATES[name]
    except KeyError:
        raise ValueError(
            f"unknown prompt template {name!r}; choose from {sorted(TEMPLATES)}"
        ) from None
