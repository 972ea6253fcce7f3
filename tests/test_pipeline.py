"""The pipeline: stages on the fake backend, chunked resume, and a whole run with the tiny model."""

from __future__ import annotations

import json
import math
import sys

import pytest

import star_gate.training.finetune as finetune_module
from star_gate import jobs as jobs_module
from star_gate.backends.fake import FakeBackend
from star_gate.config import ConfigError, RunConfig, load_config
from star_gate.data.records import Conversation, QuestionGain, ScoredControl
from star_gate.pipeline import STAGES, Pipeline
from star_gate.preflight import limit_splits
from star_gate.roles.factory import Players
from star_gate.seeds import derive_seed


def fake_config(run_dir, data_dir, *overrides: str) -> RunConfig:
    return load_config(
        None,
        [
            f"run_dir={run_dir}",
            f"data.path={data_dir}",
            "iterations=2",
            "roles.questioner.backend=fake",
            "roles.roleplayer.backend=fake",
            "roles.roleplayer.mode=persona",
            "roles.judge.backend=fake",
            "simulate.conversations_per_pair=3",
            "simulate.max_turns=3",
            "simulate.chunk_pairs=3",
            "select.top_k=2",
            "evaluate.conversations_per_pair=2",
            *overrides,
        ],
    )


@pytest.fixture
def fake_pipeline(tmp_path, dataset_dir):
    return Pipeline(fake_config(tmp_path / "run", dataset_dir), progress=False)


def test_one_iteration_on_the_fake_backend(fake_pipeline):
    p = fake_pipeline
    p.controls_stage()
    p.evaluate_stage(0)
    for stage in STAGES[:-1]:  # training needs a real model
        p.run_stage(1, stage)
    run = p.run
    for name in ("conversations", "scored", "selected", "regularized"):
        assert run.path("iter_1", f"{name}.jsonl").exists()
    # 4 pairs, chunks of 3 pairs: two chunk files, merged in order
    assert sorted(f.name for f in run.path("iter_1", "conversations.jsonl.chunks").iterdir()) == [
        "0000.jsonl",
        "0001.jsonl",
    ]
    stages = run.manifest["stages"]
    assert {f"iter_1/{s}" for s in STAGES[:-1]} <= set(stages)
    assert {
        "eval/controls",
        "eval/iter_0",
        "eval/iter_0/simulate",
        "iter_1/simulate/chunk_0001",
    } <= set(stages)
    assert stages["iter_1/simulate"]["records"] == 12 and stages["iter_1/simulate"]["pairs"] == 4
    assert stages["iter_1/select"]["records"] == 8
    assert stages["iter_1/regularize"]["mode"] == "policy"

    conversations = run.records("iter_1/simulate", Conversation.from_json)
    assert [c.pair_id for c in conversations] == [
        p_.pair_id for p_ in p.pairs("A") for _ in range(3)
    ]
    assert all(c.persona_id in {"p1", "p2"} for c in conversations)  # split A
    scored = run.records("iter_1/score", Conversation.from_json)
    assert [c.replace(logprob=None) for c in scored] == conversations and all(
        c.logprob < 0 for c in scored
    )
    final = run.records("iter_1/regularize", Conversation.from_json)
    assert len(final) == 8 and all(c.response and c.logprob is not None for c in final)

    controls = run.records("eval/controls", ScoredControl.from_json)
    assert len(controls) == 8 and {(c.task_id, c.persona_id) for c in controls} == {
        ("t5", "p5"),
        ("t5", "p6"),
        ("t6", "p5"),
        ("t6", "p6"),
    }
    rows = p.eval_table()
    assert [r.label for r in rows] == [
        "negative control",
        "positive control",
        "Q_0 conversations",
        "Q_0 random persona",
    ]
    assert [r.count for r in rows] == [4, 4, 8, 8]
    assert all(math.isfinite(r.mean) and math.isfinite(r.sem) for r in rows)


def test_openings_start_training_conversations_only(tmp_path, dataset_dir):
    opening = "Before I answer, could you tell me"
    config = fake_config(tmp_path / "run", dataset_dir, f'simulate.openings=["", "{opening}"]')
    p = Pipeline(config, progress=False)
    p.evaluate_stage(0)
    p.run_stage(1, "simulate")
    trained_on = p.run.records("iter_1/simulate", Conversation.from_json)
    assert [c.questions[0].startswith(opening) for c in trained_on] == [
        c.sample_index % 2 == 1 for c in trained_on
    ]
    tested = p.run.records("eval/iter_0/simulate", Conversation.from_json)
    assert tested and not any(q.startswith(opening) for c in tested for q in c.questions)


def test_one_backend_per_model_serves_every_role(fake_pipeline):
    p = fake_pipeline
    assert p.players.scorer() is p.players.questioner(p.policy_model(0)).backend
    assert p.players.roleplayer().backend is p.players.backend(p.config.roles.roleplayer)
    assert isinstance(p.players.scorer(), FakeBackend)
    assert (
        p.players.questioner(p.policy_model(1)).backend is not p.players.scorer()
    )  # the checkpoint of iteration 1 is another model
    assert p.players.questioner(p.policy_model(1)).backend.name == str(p.checkpoint(1))


def test_each_stage_uses_the_right_model(tmp_path, dataset_dir, tiny_dir, monkeypatch):
    """Q_{k-1} simulates and answers, Q_BASE scores, and training always starts from Q_BASE."""
    config = fake_config(tmp_path / "run", dataset_dir, f"roles.questioner.model={tiny_dir}")
    p = Pipeline(config, progress=False)
    trained = []

    def fake_finetune(examples, base_model, output_dir, cfg, seed, **_):
        trained.append((base_model, len(examples), cfg.learning_rate))
        output_dir.mkdir(parents=True)
        return {"train_loss": 1.0, "steps": 1, "examples": len(examples)}

    monkeypatch.setattr(finetune_module, "finetune", fake_finetune)

    def calls(model: str) -> dict:
        backend = p.players.backend(config.roles.questioner, model)
        return dict(backend.calls)

    base = str(tiny_dir)
    for iteration in (1, 2):
        policy = base if iteration == 1 else str(p.checkpoint(1))
        before = calls(policy), calls(base)
        p.run_stage(iteration, "simulate")
        assert calls(policy)["generate"] > before[0]["generate"]
        p.run_stage(iteration, "score")
        assert (
            calls(base)["logprobs"] == before[1]["logprobs"] + 2
        )  # one batched call per chunk of 3 pairs
        p.run_stage(iteration, "select")
        middle = calls(policy)["generate"]
        p.run_stage(iteration, "regularize")
        assert calls(policy)["generate"] == middle + 2  # one batched call per chunk of 3 pairs
        p.run_stage(iteration, "train")
        assert p.checkpoint(iteration).is_dir()
    assert calls(str(p.checkpoint(1)))["logprobs"] == 0  # the policy never scores
    assert trained == [(config.roles.questioner.model, 8, config.train.learning_rate)] * 2
    assert p.run.manifest["stages"]["iter_2/train"]["examples"] == 8


def test_splits_alternate(fake_pipeline):
    assert [fake_pipeline.split_for(i) for i in (1, 2, 3, 4)] == ["A", "B", "A", "B"]


def test_stage_before_its_input_is_refused(fake_pipeline):
    with pytest.raises(RuntimeError, match="stage iter_1/simulate has not run yet"):
        fake_pipeline.run_stage(1, "score")


def test_finished_stages_are_skipped(fake_pipeline, monkeypatch):
    p = fake_pipeline
    for stage in STAGES[:-1]:
        p.run_stage(1, stage)
    before = {k: v["finished"] for k, v in p.run.manifest["stages"].items()}
    monkeypatch.setattr(
        Players, "backend", lambda *a, **k: pytest.fail("a finished stage asked for a model")
    )
    again = Pipeline(p.config, progress=False)
    for stage in STAGES[:-1]:
        again.run_stage(1, stage)
    assert {k: v["finished"] for k, v in again.run.manifest["stages"].items()} == before


def crash_simulation_at(monkeypatch, nth: int) -> list[list[str]]:
    """Make the nth simulate call (one per chunk) stop the run as a crash would; returns the
    pair ids of every call."""
    real_simulate = jobs_module.simulate
    calls = []

    def crashing(pairs, *args, **kwargs):
        calls.append([p.pair_id for p in pairs])
        if len(calls) == nth:
            raise KeyboardInterrupt("crash")
        return real_simulate(pairs, *args, **kwargs)

    monkeypatch.setattr(jobs_module, "simulate", crashing)
    return calls


def test_crashed_simulation_resumes_after_the_last_finished_chunk(
    tmp_path, dataset_dir, monkeypatch
):
    config = fake_config(tmp_path / "run", dataset_dir, "simulate.chunk_pairs=1")
    reference = Pipeline(
        fake_config(tmp_path / "ref", dataset_dir, "simulate.chunk_pairs=1"), progress=False
    )
    reference.simulate_stage(1)
    calls = crash_simulation_at(monkeypatch, 3)
    with pytest.raises(KeyboardInterrupt):
        Pipeline(config, progress=False).simulate_stage(1)
    resumed = Pipeline(config, progress=False)
    assert resumed.run.is_done("iter_1/simulate/chunk_0001") and not resumed.run.is_done(
        "iter_1/simulate"
    )
    calls.clear()
    resumed.simulate_stage(1)
    assert calls == [["t2|p1"], ["t2|p2"]]  # only the chunks that had not finished
    merged = resumed.run.records("iter_1/simulate", Conversation.from_json)
    assert merged == reference.run.records("iter_1/simulate", Conversation.from_json)


def test_branch_with_other_chunks_redoes_them(tmp_path, dataset_dir, monkeypatch):
    # A crash leaves one chunk of one pair; a branch that chunks by two pairs must not take it
    # for its own first chunk (which would lose the second pair's conversations).
    crash_simulation_at(monkeypatch, 2)
    one = fake_config(tmp_path / "one", dataset_dir, "simulate.chunk_pairs=1")
    with pytest.raises(KeyboardInterrupt):
        Pipeline(one, progress=False).simulate_stage(1)
    monkeypatch.undo()
    two = fake_config(tmp_path / "two", dataset_dir, "simulate.chunk_pairs=2")
    branched = Pipeline(two, progress=False, branch_from=str(tmp_path / "one"))
    assert branched.run.is_done("iter_1/simulate/chunk_0000")  # as listed, before the check
    branched.simulate_stage(1)
    fresh = Pipeline(fake_config(tmp_path / "fresh", dataset_dir, "simulate.chunk_pairs=2"))
    fresh.simulate_stage(1)
    merged = branched.run.records("iter_1/simulate", Conversation.from_json)
    assert merged == fresh.run.records("iter_1/simulate", Conversation.from_json)
    assert len({c.pair_id for c in merged}) == 4


def test_changed_config_needs_restart(tmp_path, dataset_dir):
    p = Pipeline(fake_config(tmp_path / "run", dataset_dir), progress=False)
    p.simulate_stage(1)
    changed = fake_config(tmp_path / "run", dataset_dir, "seed=1")
    with pytest.raises(ConfigError, match="different config"):
        Pipeline(changed, progress=False)
    restarted = Pipeline(changed, restart=True, progress=False)
    assert not restarted.run.is_done("iter_1/simulate")


def test_unknown_split_is_refused_before_any_model(tmp_path, dataset_dir):
    with pytest.raises(ValueError, match=r"no split 'C'; it has \['A', 'B', 'test'\]"):
        Pipeline(
            fake_config(tmp_path / "run", dataset_dir, "data.train_splits=[A, C]"), progress=False
        )
    assert not (tmp_path / "run").exists()


def test_limits_keep_the_first_tasks_and_personas(tmp_path, dataset_dir):
    p = Pipeline(
        fake_config(
            tmp_path / "run",
            dataset_dir,
            "data.max_tasks=1",
            "data.max_personas=1",
            "evaluate.random_persona=false",
        ),
        progress=False,
    )
    assert [x.pair_id for x in p.pairs("A")] == ["t1|p1"]
    assert [x.pair_id for x in p.pairs("test")] == ["t5|p5"]


def test_random_persona_condition_needs_two_test_personas(tmp_path, dataset_dir):
    with pytest.raises(ValueError, match="evaluate.random_persona needs at least 2 test personas"):
        Pipeline(fake_config(tmp_path / "run", dataset_dir, "data.max_personas=1"), progress=False)
    assert not (tmp_path / "run").exists()


def test_limit_splits_with_no_limits_keeps_everything(dataset):
    before = {k: dict(v) for k, v in dataset.splits.items()}
    assert limit_splits(dataset, None, None).splits == before


def test_grounded_roleplayer_answers_from_the_persona(tmp_path, dataset_dir, retriever):
    p = Pipeline(
        fake_config(tmp_path / "run", dataset_dir, "roles.roleplayer.mode=grounded"), progress=False
    )
    p.players.retriever = retriever  # the session's encoder, instead of loading another
    p.simulate_stage(1)
    personas = p.dataset.personas
    for c in p.run.records("iter_1/simulate", Conversation.from_json):
        assert all(answer in personas[c.persona_id].description for answer in c.answers)


def test_facts_mode_needs_no_roleplayer_model(tmp_path, dataset_dir, retriever):
    p = Pipeline(
        fake_config(
            tmp_path / "run",
            dataset_dir,
            "roles.roleplayer.mode=facts",
            "roles.roleplayer.facts_per_answer=1",
        ),
        progress=False,
    )
    p.players.retriever = retriever
    assert p.players.roleplayer().backend is None
    p.simulate_stage(1)
    conversations = p.run.records("iter_1/simulate", Conversation.from_json)
    assert all(
        a.endswith(".") and a in p.dataset.personas[c.persona_id].description
        for c in conversations
        for a in c.answers
    )


def test_stage_seed_is_stable_and_distinct():
    seeds = {derive_seed(0, "iter_1/simulate", i) for i in range(50)}
    assert len(seeds) == 50 and all(0 <= s < 2**31 for s in seeds)
    assert derive_seed(0, "x", 1) == derive_seed(0, "x", 1) != derive_seed(1, "x", 1)
    assert (
        derive_seed(0, "x", 1) == 1314676631
    )  # crc32 of "0|x|1": the same in every process (no hash salt)


# -- a whole run: the tiny model as questioner and scorer, the fake as roleplayer ----------------


def test_whole_run_writes_every_stage(tiny_run):
    config, _ = tiny_run
    run_dir = Pipeline(config, progress=False).run.root
    manifest = json.loads((run_dir / "manifest.json").read_text())
    for iteration in (1, 2):
        for stage in STAGES:
            entry = manifest["stages"][f"iter_{iteration}/{stage}"]
            assert (run_dir / entry["output"]).exists()
        assert manifest["stages"][f"eval/iter_{iteration}"]["records"] == 4
        assert (run_dir / f"iter_{iteration}" / "checkpoint" / "config.json").exists()
        assert not (run_dir / f"iter_{iteration}" / "checkpoint.partial").exists()
        assert not (run_dir / f"iter_{iteration}" / "checkpoint" / "trainer").exists()
    train = manifest["stages"]["iter_1/train"]
    assert train["output"] == "iter_1/checkpoint"
    assert train["examples"] == 3 and "eval_loss" in train and train["truncated_examples"] == 0
    assert manifest["stages"]["iter_2/select"]["records"] == 4
    if sys.platform.startswith("linux"):  # each stage's peak memory, and the run's
        peaks = [entry["peak_rss_mb"] for entry in manifest["stages"].values()]
        assert all(peak > 0 for peak in peaks) and manifest["peak_rss_mb"] == max(peaks)
    assert {
        c.persona_id
        for c in Pipeline(config, progress=False).run.records(
            "iter_2/simulate", Conversation.from_json
        )
    } == {"p3", "p4"}
    assert (run_dir / "config.yaml").exists() and (run_dir / "eval" / "controls.jsonl").exists()


def test_whole_run_eval_table(tiny_run):
    _, rows = tiny_run
    assert [r.label for r in rows] == [
        "negative control",
        "positive control",
        "Q_0 conversations",
        "Q_0 random persona",
        "Q_1 conversations",
        "Q_1 random persona",
        "Q_2 conversations",
        "Q_2 random persona",
    ]
    assert all(r.count == 4 and r.mean < 0 and math.isfinite(r.sem) for r in rows)


def test_trained_checkpoints_differ_from_base_and_each_other(tiny_run, tiny_dir):
    import torch
    from transformers import AutoModelForCausalLM

    config, _ = tiny_run
    run = Pipeline(config, progress=False).run
    weights = [
        AutoModelForCausalLM.from_pretrained(path).state_dict()
        for path in (tiny_dir, run.path("iter_1", "checkpoint"), run.path("iter_2", "checkpoint"))
    ]
    for a, b in ((0, 1), (0, 2), (1, 2)):
        assert any(not torch.equal(weights[a][k], weights[b][k]) for k in weights[0]), (a, b)


def test_rerun_calls_no_backend(tiny_run, monkeypatch):
    config, rows = tiny_run
    manifest = (Pipeline(config, progress=False).run.manifest_path).read_text()

    def no_models(*args, **kwargs):
        raise AssertionError("a finished run asked for a model")

    monkeypatch.setattr(Players, "backend", no_models)
    monkeypatch.setattr("transformers.AutoModelForCausalLM.from_pretrained", no_models)
    again = Pipeline(config, progress=False)
    assert again.run_all() == rows
    assert again.run.manifest_path.read_text() == manifest


def test_paired_gain_averages_per_pair_differences(tiny_run):
    config, rows = tiny_run
    p = Pipeline(config, progress=False)
    gain = p.results().paired_gain(2, 0)
    assert gain.count == 4
    later, earlier = (
        {c.pair_id: c.logprob for c in p.run.records(f"eval/iter_{i}", Conversation.from_json)}
        for i in (2, 0)
    )
    diffs = [later[k] - earlier[k] for k in later]
    assert gain.mean == pytest.approx(sum(diffs) / len(diffs))
    assert gain.mean == pytest.approx(rows[6].mean - rows[2].mean)  # one conversation per pair
    assert p.results().paired_gain(3, 0) is None


def test_question_gains_are_recorded_reported_and_resumed(tmp_path, dataset_dir):
    from star_gate.report import write_report

    config = fake_config(tmp_path / "run", dataset_dir, "evaluate.question_gains=true")
    with Pipeline(config, progress=False) as p:
        p.controls_stage()
        p.evaluate_stage(0)
        key = p.run.eval_key(0, "question_gains")
        gains = p.run.records(key, QuestionGain.from_json)
        scored = p.run.records(p.run.eval_key(0), Conversation.from_json)
        assert len(gains) == sum(len(c.answers) for c in scored)
        rows = p.results().question_gains(0)
        assert [row.label for row in rows] == [
            f"Q_0 question {q}" for q in range(1, max(len(c.answers) for c in scored) + 1)
        ]
        assert rows[0].count == len({c.pair_id for c in scored})
        before = p.run.path(p.run.eval_output(0, "question_gains")).read_bytes()
        p.evaluate_stage(0)  # done: nothing is redone
        assert p.run.path(p.run.eval_output(0, "question_gains")).read_bytes() == before
        report = write_report([p.run.root]).read_text()
    assert "## What each question adds" in report and "| Q_0 | " in report


def test_random_persona_condition_can_use_fewer_conversations(tmp_path, dataset_dir):
    p = Pipeline(
        fake_config(
            tmp_path / "run",
            dataset_dir,
            "evaluate.conversations_per_pair=3",
            "evaluate.random_conversations_per_pair=1",
            "evaluate.win_rates=false",
        ),
        progress=False,
    )
    p.evaluate_stage(0)
    test_pairs = len(p.pairs("test"))
    true_persona = p.run.records(p.run.eval_key(0), Conversation.from_json)
    random_persona = p.run.records(p.run.condition_keys(0, "random")[2], Conversation.from_json)
    assert len(true_persona) == 3 * test_pairs
    assert len(random_persona) == test_pairs
    assert {c.sample_index for c in random_persona} == {0}


def test_reward_after_address_scores_training_and_test_without_the_name(tmp_path, dataset_dir):
    def scores(reward: str):
        p = Pipeline(
            fake_config(tmp_path / reward, dataset_dir, f"score.reward={reward}"), progress=False
        )
        p.controls_stage()
        p.simulate_stage(1)
        p.score_stage(1)
        controls = p.run.records(p.run.CONTROLS_KEY, ScoredControl.from_json)
        scored = p.run.records(p.run.stage_key(1, "score"), Conversation.from_json)
        return [c.logprob for c in controls], scored

    full_controls, full = scores("gold_logprob")
    rest_controls, rest = scores("gold_after_address")
    assert [c.replace(logprob=None) for c in rest] == [c.replace(logprob=None) for c in full]
    # the fake charges 1 for "Aoife," once the conversation has the name, 3 before
    assert {round(f.logprob - r.logprob, 6) for f, r in zip(full, rest)} <= {-1.0, -3.0}
    assert all(f < r for f, r in zip(full_controls, rest_controls))
