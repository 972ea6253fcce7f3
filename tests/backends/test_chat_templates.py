"""Chat templates that cannot take a system message in place (Mistral, Gemma): the system prompt
is folded into the first user message, for generation, scoring and training alike."""

from __future__ import annotations

import copy

import pytest

from star_gate.backends.base import SamplingParams
from star_gate.backends.tokens import fold_system_message, render_chat, takes_system_message

# Like Mistral-7B-Instruct-v0.2: strict user/assistant alternation, a system role is an error.
STRICT_ALTERNATION = (
    "{{ bos_token }}{% for message in messages %}"
    "{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
    "{% if message['role'] == 'user' %}{{ '[INST] ' + message['content'] + ' [/INST]' }}"
    "{% else %}{{ message['content'] + eos_token }}{% endif %}{% endfor %}"
)
# Like later Mistral templates: the system prompt is put before the last user message only.
SYSTEM_BEFORE_LAST_USER = (
    "{% set system = messages[0]['content'] if messages[0]['role'] == 'system' else '' %}"
    "{% set turns = messages[1:] if system else messages %}"
    "{% for message in turns %}{% if message['role'] == 'user' %}"
    "{{ '[INST] ' + (system + '\n\n' if loop.last and system else '') + message['content'] + ' [/INST]' }}"
    "{% else %}{{ message['content'] + eos_token }}{% endif %}{% endfor %}"
)
CHAT = [
    {"role": "system", "content": "You ask one question at a time."},
    {"role": "user", "content": "Recommend me a book."},
    {"role": "assistant", "content": "What topics do you enjoy?"},
    {"role": "user", "content": "History."},
]


def with_template(tokenizer, template: str):
    tokenizer = copy.deepcopy(tokenizer)
    tokenizer.chat_template = template
    return tokenizer


def test_chatml_takes_a_system_message_and_renders_unchanged(tiny_tokenizer):
    assert takes_system_message(tiny_tokenizer)
    expected = tiny_tokenizer.apply_chat_template(CHAT, tokenize=False, add_generation_prompt=True)
    assert render_chat(tiny_tokenizer, CHAT) == expected


@pytest.mark.parametrize("template", [STRICT_ALTERNATION, SYSTEM_BEFORE_LAST_USER])
def test_templates_without_a_system_slot_get_it_folded_into_the_first_user_turn(
    tiny_tokenizer, template
):
    tokenizer = with_template(tiny_tokenizer, template)
    assert not takes_system_message(tokenizer)
    text = render_chat(tokenizer, CHAT)
    assert text.count("You ask one question at a time.") == 1
    assert text.index("You ask one question at a time.") < text.index("Recommend me a book.")
    # Each turn's rendering starts with the previous one's: the system prompt never moves.
    shorter = render_chat(tokenizer, CHAT[:2])
    assert text.startswith(shorter.rstrip())


def test_fold_system_message():
    folded = fold_system_message(CHAT)
    assert folded[0] == {
        "role": "user",
        "content": "You ask one question at a time.\n\nRecommend me a book.",
    }
    assert folded[1:] == CHAT[2:]
    assert fold_system_message(CHAT[1:]) == CHAT[1:]
    assert fold_system_message([CHAT[0], CHAT[2]]) == [
        {"role": "user", "content": CHAT[0]["content"]},
        CHAT[2],
    ]


def test_transformers_backend_generates_and_scores_with_a_strict_template(
    tiny_model, tiny_tokenizer
):
    from star_gate.backends.hf import TransformersBackend

    tokenizer = with_template(tiny_tokenizer, STRICT_ALTERNATION)
    backend = TransformersBackend(
        "tiny", device="cpu", model_object=tiny_model, tokenizer=tokenizer, progress=False
    )
    replies = backend.generate([CHAT], SamplingParams(n=2, max_new_tokens=4, seed=1))
    assert len(replies[0]) == 2
    score = backend.logprobs([CHAT], ["Try a history of the sea."])[0]
    assert score < 0


@pytest.mark.parametrize("template", [STRICT_ALTERNATION, SYSTEM_BEFORE_LAST_USER])
def test_training_masks_work_with_templates_without_a_system_slot(tiny_tokenizer, template):
    from star_gate.data.records import Conversation
    from star_gate.roles.prompts import QUESTIONER_FEWSHOT
    from star_gate.stages.train import tokenize_with_loss_mask, training_chat

    tokenizer = with_template(tiny_tokenizer, template)
    conversation = Conversation(
        task_id="t", persona_id="p", sample_index=0, target_turns=1, response="Read Dune."
    )
    conversation = conversation.with_turn("questioner", "Which genres?").with_turn(
        "roleplayer", "Science fiction."
    )
    messages, trainable = training_chat(QUESTIONER_FEWSHOT, "Recommend me a book.", conversation)
    ids, mask, _ = tokenize_with_loss_mask(tokenizer, messages, trainable, max_length=4096)
    whole = tokenizer.decode(ids)
    trained = tokenizer.decode([i for i, m in zip(ids, mask) if m])
    assert whole.count(QUESTIONER_FEWSHOT.system[:40]) == 1
    assert "Which genres?" in trained and "Read Dune." in trained
    assert "Science fiction." not in trained and QUESTIONER_FEWSHOT.system[:40] not in trained


def test_a_chat_ending_with_the_assistant_is_left_open_for_its_continuation(tiny_tokenizer):
    chat = [{"role": "user", "content": "Recommend a book."}]
    opened = render_chat(tiny_tokenizer, [*chat, {"role": "assistant", "content": "Could you"}])
    assert opened == render_chat(tiny_tokenizer, chat) + "Could you"
