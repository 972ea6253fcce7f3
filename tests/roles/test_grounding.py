"""Persona facts: sentence splitting and retrieval with the bundled MiniLM encoder."""

from __future__ import annotations

import pytest
import torch

from star_gate.data.loaders import load_dataset
from star_gate.roles.grounding import split_facts


@pytest.mark.parametrize(
    ("text", "facts"),
    [
        ("I am Ann. I grew up in Cork.", ["I am Ann.", "I grew up in Cork."]),
        ("  Do I cook? Yes! I bake bread.  ", ["Do I cook?", "Yes!", "I bake bread."]),
        ('He said hi. "Hello," I replied.', ["He said hi.", '"Hello," I replied.']),
        (
            "I earn 3.5 times more. i.e. a lot",
            ["I earn 3.5 times more. i.e. a lot"],
        ),  # no capital: no split
        ("One sentence without a full stop", ["One sentence without a full stop"]),
        ("", []),
    ],
)
def test_split_facts(text, facts):
    assert split_facts(text) == facts


def test_bundled_personas_split_into_several_facts():
    for persona in load_dataset("bundled").personas.values():
        facts = split_facts(persona.description)
        assert len(facts) >= 5
        assert " ".join(facts) == " ".join(persona.description.split())


def test_growing_up_question_finds_growing_up_fact(retriever):
    facts = split_facts(load_dataset("bundled").personas["pa2"].description)
    assert retriever.top_facts("Where did you grow up?", facts, 1) == [
        "I grew up in a fishing town in Hokkaido."
    ]


def test_growing_up_fact_retrieved_for_every_bundled_persona(retriever):
    """Top-2 (the default facts_per_answer) always holds it; top-1 nearly always.

    MiniLM itself ranks pa1's "I taught primary school ... before I retired." above "I grew up on a
    dairy farm in County Mayo." (0.51 vs 0.42; the encoder reproduces the reference similarities).
    """
    top1_hits, checked = 0, 0
    for persona in load_dataset("bundled").personas.values():
        facts = split_facts(persona.description)
        grew_up = [f for f in facts if "grew up" in f]
        if not grew_up:
            continue
        checked += 1
        assert grew_up[0] in retriever.top_facts("Where did you grow up?", facts, 2), (
            persona.persona_id
        )
        top1_hits += retriever.top_facts("Where did you grow up?", facts, 1) == grew_up[:1]
    assert checked >= 15 and top1_hits >= checked - 1


def test_encoder_matches_reference_similarities(retriever):
    """The sentence-transformers quickstart values for all-MiniLM-L6-v2 (mean pooling, unit norm)."""
    emb = retriever.embed(
        ["The weather is lovely today.", "It's so sunny outside!", "He drove to the stadium."]
    )
    similarity = emb @ emb.T
    assert similarity[0, 1].item() == pytest.approx(0.6660, abs=2e-3)
    assert similarity[0, 2].item() == pytest.approx(0.1046, abs=2e-3)
    assert similarity[1, 2].item() == pytest.approx(0.1411, abs=2e-3)


def test_top_facts_keep_original_order(retriever):
    facts = [
        "I work as a nurse on night shifts.",
        "My favourite food is spicy curry.",
        "I grew up in a fishing village near Bergen.",
        "I have two cats.",
    ]
    chosen = retriever.top_facts("Where are you from and where did you grow up?", facts, 2)
    assert len(chosen) == 2 and facts[2] in chosen
    assert chosen == [f for f in facts if f in chosen]
    assert retriever.top_facts("anything", facts, 4) == facts
    assert retriever.top_facts("anything", facts[:1], 3) == facts[:1]


def test_embeddings_are_unit_norm_and_cached(retriever):
    texts = ["I love jazz.", "I love jazz music.", "The tax office is closed."]
    emb = retriever.embed(texts)
    assert emb.shape == (3, 384)
    assert torch.allclose(emb.norm(dim=-1), torch.ones(3), atol=1e-5)
    assert emb[0] @ emb[1] > emb[0] @ emb[2]
    assert all(t in retriever._cache for t in texts)
    assert torch.equal(retriever.embed(texts[::-1]), emb.flip(0))


def test_without_repeats_a_second_question_hears_new_facts(retriever):
    from star_gate.backends.base import SamplingParams
    from star_gate.data.records import Conversation, Persona
    from star_gate.roles.players import GroundedRoleplayer
    from star_gate.roles.prompts import ROLEPLAYER_GROUNDED

    persona = Persona(
        "p", "Ana",
        "I grew up in Lisbon. I love jazz. I work as a nurse. I have two cats. I cannot eat gluten.",
    )  # fmt: skip
    same_question = (
        Conversation("t", "p", 0, 2)
        .with_turn("questioner", "Where did you grow up?")
        .with_turn("roleplayer", "(answered)")
        .with_turn("questioner", "Where did you grow up?")
    )

    def answer(repeat_facts):
        player = GroundedRoleplayer(
            None, ROLEPLAYER_GROUNDED, SamplingParams(), retriever, 2, verbatim=True,
            repeat_facts=repeat_facts,
        )  # fmt: skip
        first = player.answer([persona], ["task"], [Conversation("t", "p", 0, 1).with_turn(
            "questioner", "Where did you grow up?")], seed=0)[0]  # fmt: skip
        return first, player.answer([persona], ["task"], [same_question], seed=0)[0]

    first, again = answer(repeat_facts=True)
    assert again == first and "I grew up in Lisbon." in first  # the same question, the same facts
    first, second = answer(repeat_facts=False)
    assert first == answer(repeat_facts=True)[0]  # the first answer is unchanged
    told = {f.strip() + "." for f in first.split(".") if f.strip()}
    heard = {f.strip() + "." for f in second.split(".") if f.strip()}
    assert len(heard) == 2 and not told & heard  # two facts, none told before


@pytest.mark.parametrize(
    ("turn", "asked"),
    [
        ("Great idea! Try a DSLR. What do you like to shoot?", "What do you like to shoot?"),
        ("Where do you live? I can suggest trips.", "Where do you live?"),
        ("Do you like jazz? Or rock?", "Do you like jazz? Or rock?"),
        ('Have you read "Dune?"', 'Have you read "Dune?"'),
        ("Start by saving a little every month.", ""),
        ("", ""),
    ],
)
def test_questions_in_keeps_the_sentences_that_ask(turn, asked):
    from star_gate.roles.grounding import questions_in

    assert questions_in(turn) == asked


class RecordingBackend:
    """Answers every chat with 'model reply' and keeps the chats it was given."""

    def __init__(self):
        self.chats = []

    def generate(self, chats, params):
        self.chats += chats
        return [["model reply"] for _ in chats]


def test_answering_questions_only_tells_nothing_to_advice(retriever):
    from star_gate.backends.base import SamplingParams
    from star_gate.data.records import Conversation, Persona
    from star_gate.roles.players import NOT_ASKED, GroundedRoleplayer
    from star_gate.roles.prompts import ROLEPLAYER_GROUNDED

    persona = Persona(
        "p", "Ana",
        "I grew up in Lisbon. I love jazz music. I work as a nurse. I have two cats.",
    )  # fmt: skip
    turns = [
        "Jazz music is a great idea: try a jazz concert tonight.",  # advice, no question
        "Jazz concerts with live music are fun. Where did you grow up?",  # advice, then a question
    ]
    conversations = [
        Conversation("t", "p", i, 1).with_turn("questioner", t) for i, t in enumerate(turns)
    ]

    def answers(only, backend=None):
        player = GroundedRoleplayer(
            backend, ROLEPLAYER_GROUNDED, SamplingParams(), retriever, 1,
            verbatim=backend is None, answer_questions_only=only,
        )  # fmt: skip
        return player.answer([persona] * 2, ["task"] * 2, conversations, seed=0)

    # by default the advice's words draw out the fact they are nearest to
    assert answers(only=False) == ["I love jazz music.", "I love jazz music."]
    assert answers(only=True) == [NOT_ASKED, "I grew up in Lisbon."]
    backend = RecordingBackend()
    assert answers(only=True, backend=backend) == [NOT_ASKED, "model reply"]
    assert len(backend.chats) == 1  # the model answers the turn that asks, and only that one
    heard = str(backend.chats[0])
    assert "Lisbon" in heard and "Where did you grow up?" in heard and "concerts" not in heard
