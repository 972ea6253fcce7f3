"""Prompt templates: named, versioned, and formattable with the fields each role gives."""

from __future__ import annotations

import pytest

from star_gate.roles.prompts import TEMPLATES, get_template

FIELDS = {"persona": "I am Ann.", "task": "Recommend me a book."}


def test_templates_are_keyed_by_their_names_and_versioned():
    assert {
        "questioner_plain",
        "questioner_fewshot",
        "roleplayer_persona",
        "roleplayer_grounded",
        "responder",
        "oracle",
        "judge",
    } <= set(TEMPLATES)
    for name, template in TEMPLATES.items():
        assert template.name == name
        assert template.version


@pytest.mark.parametrize("name", sorted(TEMPLATES))
def test_opening_formats_and_alternates(name):
    messages = get_template(name).opening(**FIELDS)
    assert messages[0]["role"] == "system"
    assert "{" not in messages[0]["content"]
    roles = [m["role"] for m in messages[1:]]
    assert roles == ["user", "assistant"] * (len(roles) // 2)  # few-shot pairs, user first


def test_persona_template_shows_persona_and_task():
    system = get_template("roleplayer_persona").opening(**FIELDS)[0]["content"]
    assert "I am Ann." in system and "Recommend me a book." in system


def test_questioner_templates_have_no_persona_slot():
    questioners = ("questioner_plain", "questioner_fewshot", "questioner_person")
    for name in (*questioners, "roleplayer_grounded", "responder"):
        assert "{persona}" not in get_template(name).system


def test_person_prompt_asks_who_the_user_is_last_and_names_nobody():
    fewshot, person = get_template("questioner_fewshot"), get_template("questioner_person")
    assert person.few_shot[:-2] == fewshot.few_shot[:-2]  # the podcast example, unchanged
    last_question = person.few_shot[-1]
    assert last_question[0] == "assistant" and "your name" in last_question[1]
    # a name in an example would be copied into every conversation
    assert not any("my name is" in text.lower() for _, text in person.few_shot)


def test_unknown_template():
    with pytest.raises(ValueError, match="unknown prompt template 'nope'; choose from"):
        get_template("nope")
