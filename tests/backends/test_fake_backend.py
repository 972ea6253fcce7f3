"""The fake backend: deterministic, batched, and rewarding completions grounded in the prompt."""

from __future__ import annotations

from star_gate.backends.base import Backend, SamplingParams
from star_gate.backends.fake import FakeBackend


def test_fake_satisfies_protocol(fake):
    assert isinstance(fake, Backend)
    assert FakeBackend(model="x", device="cpu", batch_size=3).name == "x"  # ignores backend options


def test_generate_is_deterministic_and_ordered(fake):
    chats = [[{"role": "user", "content": f"request {i}"}] for i in range(4)]
    params = SamplingParams(n=3, seed=1)
    replies = fake.generate(chats, params)
    assert len(replies) == 4 and all(len(r) == 3 for r in replies)
    assert replies == FakeBackend().generate(chats, params)
    assert replies[::-1] == fake.generate(chats[::-1], params)
    assert len({t for r in replies for t in r}) == 12
    assert fake.generate(chats, SamplingParams(n=3, seed=2)) != replies
    assert fake.calls["generate"] == 3  # one call per batch, not per chat


def test_generate_answers_by_prompt_kind(fake):
    facts = [
        {"role": "user", "content": "Facts about you:\n- I grew up in Cork.\n\nQuestion: Where?"}
    ]
    final = [{"role": "user", "content": "Thank you. Now please answer my original request: X"}]
    assert fake.generate([facts], SamplingParams())[0] == ["I grew up in Cork."]
    assert fake.generate([final], SamplingParams())[0][0].startswith("Here is my tailored answer")


def test_logprobs_reward_words_seen_in_the_prompt(fake):
    with_context = [{"role": "user", "content": "I love jazz records"}]
    without = [{"role": "user", "content": "hello"}]
    seen, unseen = fake.logprobs([with_context, without], ["jazz records", "jazz records"])
    assert seen == -2.0 and unseen == -6.0
    assert fake.calls["logprobs"] == 1
