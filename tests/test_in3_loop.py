"""The loop on a dataset scored by missing details (IN3): the details roleplayer, the `details`
reward and its exact controls, no gold anywhere, resume, `star-gate bench in3`, and the refusals
before any model loads."""

from __future__ import annotations

from pathlib import Path

import pytest
from in3_samples import in3_rows, write_in3
from typer.testing import CliRunner

from star_gate.cli import app
from star_gate.config import RunConfig, load_config
from star_gate.data.in3 import import_in3
from star_gate.data.loaders import load_dataset
from star_gate.data.records import Conversation, MissingDetail, PairDetails, Persona
from star_gate.in3_bench import in3_measures
from star_gate.pipeline import Pipeline
from star_gate.roles.detail_matcher import DetailMatcher
from star_gate.roles.players import NO_PREFERENCE, DetailsRoleplayer
from star_gate.stages import select_preference_pairs
from star_gate.stages.score import details_controls, details_reward, score_details

TRIP = PairDetails(
    "t1",
    "u1",
    vague=True,
    category="Travel",
    details=(
        MissingDetail("Duration of the trip", 3, "How long?", ("3-5 days", "1 week"), "1 week"),
        MissingDetail("Budget for the trip", 1, "Budget?", ("Economy", "Luxury"), "Luxury"),
    ),
)
CLEAR = PairDetails("t2", "u2", vague=False, category="Math", details=())


class KeywordMatcher:
    """Asks about detail i when the question holds the first word of its description."""

    def asked(self, question, details):
        return [i for i, d in enumerate(details) if d.description.split()[0] in question]


def test_details_reward_weights_by_importance_and_punishes_asking_on_clear_requests():
    matcher = KeywordMatcher()
    assert details_reward(TRIP, [], matcher) == 0.0
    assert details_reward(TRIP, ["Duration?"], matcher) == 0.75
    assert details_reward(TRIP, ["Budget?", "Duration?"], matcher) == 1.0
    assert details_reward(TRIP, ["Budget?", "Budget again?"], matcher) == 0.25
    assert details_reward(CLEAR, [], matcher) == 1.0
    assert details_reward(CLEAR, ["Anything else?"], matcher) == 0.0


def test_details_roleplayer_tells_what_was_asked_and_nothing_else():
    persona = Persona("u1", "User 1", "")
    roleplayer = DetailsRoleplayer(DetailMatcher(), {"u1": TRIP})
    conversations = [
        Conversation("t1", "u1", 0, 2).with_turn("questioner", question)
        for question in (
            "How long will your trip last?",
            "What is your budget for the trip, and how long will you stay?",
            "What is your favourite colour?",
        )
    ]
    answers = roleplayer.answer([persona] * 3, ["Plan a trip"] * 3, conversations, seed=0)
    assert answers[0] == "Duration of the trip: 1 week."
    told = {fact.strip(" .") for fact in answers[1].split(". ")}
    assert told == {"Duration of the trip: 1 week", "Budget for the trip: Luxury"}
    assert answers[2] == NO_PREFERENCE


def test_in3_measures_count_asking_recovery_rounds_and_importance():
    pairs_by = {}
    for details in (TRIP, CLEAR):
        pairs_by[details.pair_id] = type("P", (), {"pair_id": details.pair_id, "details": details})

    def asked(task, persona, *questions):
        c = Conversation(task, persona, 0, 3)
        for q in questions:
            c = c.with_turn("questioner", q).with_turn("roleplayer", "ok")
        return c

    conversations = [asked("t1", "u1", "Duration?", "Nothing?"), asked("t2", "u2")]
    m = in3_measures("Q_0", conversations, list(pairs_by.values()), KeywordMatcher())
    assert m.vagueness_accuracy == 1.0 and m.always_ask_accuracy == 0.5
    assert m.recovered == 0.5 and m.by_importance[0] == 0.0 and m.by_importance[2] == 1.0
    assert m.rounds == 2.0 and m.details_per_question == 0.5 and m.weighted == 0.75


def test_exact_controls():
    dataset_pairs = [
        type("P", (), {"task": type("T", (), {"task_id": d.task_id}), "details": d,
                       "persona": type("U", (), {"persona_id": d.persona_id})})
        for d in (TRIP, CLEAR)
    ]  # fmt: skip
    rows = {(c.task_id, c.condition): c.logprob for c in details_controls(dataset_pairs)}
    assert rows == {
        ("t1", "negative"): 0.0,
        ("t2", "negative"): 1.0,
        ("t1", "positive"): 1.0,
        ("t2", "positive"): 1.0,
    }


@pytest.fixture
def in3_data(tmp_path) -> Path:
    source = write_in3(tmp_path / "in3.jsonl", in3_rows(12))
    import_in3(source, tmp_path / "data", users_per_task=2, seed=0)
    return tmp_path / "data"


def in3_config(tmp_path: Path, data: Path, **changes) -> Path:
    path = tmp_path / "in3.yaml"
    path.write_text(
        f"run_dir: {tmp_path / 'run'}\n"
        "iterations: 1\n"
        f"data: {{path: {data}}}\n"
        "roles:\n"
        "  questioner: {backend: fake}\n"
        "  roleplayer: {mode: details}\n"
        "  judge: {backend: fake}\n"
        "score: {reward: details}\n"
        "simulate: {conversations_per_pair: 2, max_turns: 2, stop_early: true}\n"
        "train: {objective: sft}\n"
        "evaluate: {conversations_per_pair: 1, random_persona: false, win_rates: false}\n"
    )
    return path


def test_loop_runs_without_gold_and_resumes(tmp_path, in3_data):
    config = load_config(in3_config(tmp_path, in3_data), [])
    with Pipeline(config) as pipeline:
        pipeline.controls_stage()
        pipeline.evaluate_stage(0)
        for stage in ("simulate", "score", "select", "regularize"):
            pipeline.run_stage(1, stage)
        scored = pipeline.run.records("iter_1/score", Conversation.from_json)
        pairs = pipeline.pairs("A")
    assert len(scored) == 2 * len(pairs)
    assert all(0.0 <= c.logprob <= 1.0 for c in scored)
    dataset = load_dataset(in3_data)
    matcher = DetailMatcher()
    for c in scored:
        assert c.logprob == details_reward(
            dataset.details[(c.task_id, c.persona_id)], c.questions, matcher
        )
    before = {p.name: p.read_bytes() for p in (tmp_path / "run").rglob("*.jsonl")}
    with Pipeline(config) as pipeline:  # a rerun redoes nothing and changes nothing
        pipeline.controls_stage()
        pipeline.evaluate_stage(0)
        for stage in ("simulate", "score", "select", "regularize"):
            pipeline.run_stage(1, stage)
    after = {p.name: p.read_bytes() for p in (tmp_path / "run").rglob("*.jsonl")}
    assert before == after


def test_bench_in3_prints_the_measures_beside_the_published_rows(tmp_path, in3_data, monkeypatch):
    monkeypatch.setenv("COLUMNS", "250")
    result = CliRunner().invoke(
        app,
        ["bench", "in3", str(in3_config(tmp_path, in3_data)), "--data", str(in3_data)],
    )
    assert result.exit_code == 0, result.output
    for part in ("Q_0", "GPT-4 (published)", "0.82", "always asks", "judged by people"):
        assert part in result.output
    assert (tmp_path / "run-in3" / "manifest.json").exists()


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["score.reward=gold_logprob"], "needs gold answers"),
        (["loop=online", "score.reward=gold_logprob"], "needs gold answers"),  # no reward
        (["evaluate.random_persona=true"], "set evaluate.random_persona to false"),
        (["regularize.mode=gold"], "regularize.mode gold needs gold answers"),
    ],
)
def test_refusals_before_any_model_loads(tmp_path, in3_data, overrides, message, monkeypatch):
    monkeypatch.setenv("COLUMNS", "500")
    monkeypatch.setattr(
        "star_gate.roles.factory.load_backend",
        lambda *a, **k: pytest.fail("a model was loaded before the input was checked"),
    )
    path = in3_config(tmp_path, in3_data)
    result = CliRunner().invoke(app, ["run", str(path), *overrides])
    assert result.exit_code == 2, result.output
    assert message in " ".join(result.output.split())
    assert not (tmp_path / "run").exists()


def test_details_reward_needs_details(tmp_path, dataset_dir, monkeypatch):
    monkeypatch.setenv("COLUMNS", "500")
    path = in3_config(tmp_path, dataset_dir)
    result = CliRunner().invoke(app, ["run", str(path)])
    assert result.exit_code == 2, result.output
    assert "has no details.jsonl" in " ".join(result.output.split())
    assert isinstance(load_config(path, []), RunConfig)


def test_dpo_pairs_form_from_the_details_reward():
    """Selection for DPO ranks by the details reward like by a gold log-prob: no gold needed."""
    pair = type("P", (), {"pair_id": TRIP.pair_id, "details": TRIP})
    asked = [("Budget?",), ("Duration?",), (), ("Budget?", "Duration?")]
    conversations = []
    for index, questions in enumerate(asked):
        c = Conversation("t1", "u1", index, 2)
        for q in questions:
            c = c.with_turn("questioner", q).with_turn("roleplayer", "ok")
        conversations.append(c)
    scored = score_details(conversations, [pair], KeywordMatcher())
    assert [c.logprob for c in scored] == [0.25, 0.75, 0.0, 1.0]
    kept = select_preference_pairs(scored, k=2)
    assert [c.sample_index for c in kept] == [3, 2, 1, 0]
