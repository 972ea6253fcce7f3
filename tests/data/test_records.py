"""Records round-trip through JSON and expose the views stages rely on."""

from __future__ import annotations

import json

from star_gate.data.records import Conversation, ScoredControl, Turn


def _conversation() -> Conversation:
    c = Conversation(task_id="t1", persona_id="p1", sample_index=3, target_turns=2)
    return (
        c.with_turn("questioner", "Q1?")
        .with_turn("roleplayer", "A1.")
        .with_turn("questioner", "Q2?")
    )


def test_conversation_views():
    c = _conversation()
    assert c.pair_id == "t1|p1"
    assert c.questions == ["Q1?", "Q2?"]
    assert c.answers == ["A1."]
    assert not c.is_finished
    assert c.with_turn("roleplayer", "A2.").is_finished


def test_with_turn_does_not_mutate():
    c = Conversation(task_id="t", persona_id="p", sample_index=0, target_turns=1)
    d = c.with_turn("questioner", "Q?")
    assert c.turns == () and d.turns == (Turn("questioner", "Q?"),)


def test_conversation_json_roundtrip():
    c = _conversation().replace(logprob=-3.5, response="Answer.", roleplayer_persona_id="p9")
    row = json.loads(json.dumps(c.to_json()))
    assert Conversation.from_json(row) == c
    assert row["turns"][0] == {"speaker": "questioner", "text": "Q1?"}


def test_scored_control_roundtrip():
    s = ScoredControl("t1", "p1", "positive", -1.25)
    assert ScoredControl.from_json(json.loads(json.dumps(s.to_json()))) == s
