"""What counts as asking and what counts as a final answer.

Two rules on plain text, used everywhere a turn or an answer is classified: the roleplayer that
answers questions only, the questioner's resampling of turns that ask nothing, the asking share
in the run's table and report, and the share of final answers that are no answers. Both are
tested on labelled examples (tests/roles/test_answers.py), the bundled gold answers among them.
"""

from __future__ import annotations

import re

MIN_ANSWER_WORDS = 4
_SECOND_PERSON = re.compile(r"\b(?:you|your|yours|yourself)\b", re.IGNORECASE)
_SENTENCE_SPLIT = re.compile(r"(?<=[.!?])[\"')\]*_]*\s+")

# A '?' that proposes instead of asking: "Have you tried miso soup?", "Why not try Dune?"
_SUGGESTION = re.compile(
    r"\b(?:have you (?:ever )?(?:tried|considered|thought about|looked into)"
    r"|why not|how about|what about (?:trying|making|going|a |an |some )"
    r"|would you like (?:me to|to try)|shall i|should i (?:give|list|suggest|recommend|tell)"
    r"|can i (?:suggest|recommend)|may i (?:suggest|recommend)|did you know"
    r"|who doesn't|who does not|isn't (?:it|that)|wouldn't (?:it|that) be)\b",
    re.IGNORECASE,
)
# A request for information without a '?': "Tell me about your cooking."
_INFO_REQUEST = re.compile(
    r"^(?:[\w' -]+,\s*)?(?:please )?(?:tell me (?:about|more|what|which|how|whether|if|a bit)"
    r"|let me know (?:what|which|how|whether|if|about|your)|share (?:a bit |more )?(?:about|with me)"
    r"|i(?:'d| would) (?:love|like) to (?:know|hear|learn) (?:about|more|what|which|how|your)"
    r"|i(?:'m| am) curious (?:about|what|which|how|whether))",
    re.IGNORECASE,
)


# A question written without its '?': "What's the type of cuisine you love, and I'd love to ..."
_INTERROGATIVE = re.compile(
    r"^(?:(?:what|which|where|when|who|how)(?:'s| is| are| do| does| did| would| could| can"
    r"| kind| type| sort| much| many| often| long)|(?:do|does|are|is|have|has|could|would|can|will)"
    r" you)\b",
    re.IGNORECASE,
)


def sentences(text: str) -> list[str]:
    """The sentences of a text, split after '.', '!' or '?' and any closing quote or bracket."""
    return [s.strip() for s in _SENTENCE_SPLIT.split((text or "").strip()) if s.strip()]


def ends_with_question(text: str) -> bool:
    """Whether the text ends with '?', closing quotes, brackets and markdown aside."""
    return text.rstrip("\"')]*_ ").endswith("?")


def is_asking(sentence: str) -> bool:
    """Whether one sentence asks the person something: a question that is not a suggestion,
    an offer or a rhetorical one ("Have you tried X?", "Why not X?", "Shall I list some?",
    "Who doesn't love pizza?"), a question about the person written without its '?' ("What's the
    cuisine you love."), or a request for information ("Tell me about your diet.")."""
    sentence = sentence.strip().lstrip("\"'*_ ")
    if _INFO_REQUEST.match(sentence):
        return True
    questioning = ends_with_question(sentence) or (
        _INTERROGATIVE.match(sentence) and _SECOND_PERSON.search(sentence)
    )
    return bool(questioning) and not _SUGGESTION.search(sentence)


def asking_sentences(turn: str) -> list[str]:
    """The sentences of a turn that ask the person something (is_asking)."""
    return [s for s in sentences(turn) if is_asking(s)]


def asks(turn: str | None) -> bool:
    """Whether a questioner turn asks the person at least one real question."""
    return bool(asking_sentences(turn or ""))


# What a final answer gives: a suggestion, a recommendation, an instruction, or the thing asked for.
_ADVICE = re.compile(
    r"\b(?:you (?:could|should|might|can|may|will|'ll|need|want|would)|you'd|you'll"
    r"|i (?:recommend|suggest|would|'d)|i'd|my (?:suggestion|recommendation|advice|pick)"
    r"|here(?:'s| is| are)|why not|how about|try|consider|start|begin|pick|choose|go for"
    r"|opt for|look (?:at|for|into)|recommend\w*|suggest\w*"
    r"|would (?:suit|be|make|give|help|work)|(?:is|are|makes?) (?:a |an )?(?:great|good|perfect|"
    r"ideal|wonderful|lovely|fine|solid|safe|smart|nice|easy|cheap|fun)"
    r"|(?:good|best|ideal) (?:way|place|choice|fit|option|start|pick) (?:is|would|to|for))\b",
    re.IGNORECASE,
)
_CLAUSE_SPLIT = re.compile(r"[,;:]\s+")
_IMPERATIVE = re.compile(
    r"^(?:(?:first|then|next|also|finally|so|just|simply|perhaps|maybe|instead|now|and|or)"
    r",?\s+)*(?:add|aim|ask|avoid|bake|book|brew|bring|build|buy|call|celebrate|check|cook|create|cut"
    r"|cycle|dance|do|drive|eat|enjoy|find|focus|follow|get|give|go|grab|grow|have|head|hire|hold"
    r"|host|invest|invite|join|keep|learn|leave|let|limit|listen|make|mix|move"
    r"|explore|open|order|pack|pay|plan|plant|play|practi[cs]e|prepare|put|read|remember|rent"
    r"|replace|request|reserve|ride|save|say"
    r"|schedule|see|serve|set|share|sign|skip|spend|stay|stick|swap|switch|take|talk|tell|treat"
    r"|return|turn|use|visit|walk|watch|wear|work|write|audit|cancel|compare|list|note|track)\b",
    re.IGNORECASE,
)


def gives_advice(sentence: str) -> bool:
    """Whether a sentence suggests, recommends, instructs or offers the thing asked for."""
    body = sentence.strip().lstrip("\"'*_ ")
    return bool(_ADVICE.search(body)) or any(
        _IMPERATIVE.match(c) for c in _CLAUSE_SPLIT.split(body)
    )


def is_non_answer(text: str | None) -> bool:
    """Whether a final answer fails to answer: it is empty or shorter than MIN_ANSWER_WORDS words,
    it ends with a question mark, any sentence of it asks the person about themselves (is_asking,
    with "you": "What genre do you like?" asks, "Why not try Dune?" proposes, and a rhetorical
    "Why? Because ..." asks nothing of them), or no sentence of it gives advice
    (gives_advice): "I'm so glad you're committed to your culinary journey." neither answers nor
    asks.

    Such an answer asks another question, or says nothing, instead of answering the request. The
    rule is deliberately strict: "Looking for a book? Try Dune." counts as a non-answer.
    """
    stripped = (text or "").strip()
    if len(stripped.split()) < MIN_ANSWER_WORDS or ends_with_question(stripped):
        return True
    parts = sentences(stripped)
    asks_back = any(is_asking(s) and _SECOND_PERSON.search(s) for s in parts)
    return asks_back or not any(gives_advice(s) for s in parts)
