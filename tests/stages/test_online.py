"""loop online: round pairs, group-relative advantages (per conversation and per question), the
trained tokens decoded one by one, the update's loss against a hand computation, an update that
moves the policy toward its advantages, and a run that resumes after a crash between rounds with
records equal to an uninterrupted one."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from star_gate.config import OnlineConfig, TrainConfig
from star_gate.data.records import Conversation
from star_gate.roles.prompts import QUESTIONER_FEWSHOT
from star_gate.stages.online import (
    conversation_advantages,
    online_chat,
    policy_examples,
    round_pairs,
    turn_advantages,
)
from star_gate.training.online import OPTIMIZER_STATE, online_loss, policy_update, token_logprobs

ACCELERATE = Path(__file__).resolve().parents[2] / "configs" / "accelerate"


def talk(task, persona, sample_index, score, questions, response=None):
    c = Conversation(task, persona, sample_index, len(questions), logprob=score)
    for q in questions:
        c = c.with_turn("questioner", q).with_turn("roleplayer", f"answer to {q}")
    return c.replace(response=response)


def test_rounds_cycle_through_one_seeded_order_of_the_split(dataset):
    pairs = dataset.pairs("A")  # 4 pairs
    rounds = [round_pairs(pairs, r, 3, seed=7) for r in (1, 2)]
    first_two = [p.pair_id for r in rounds for p in r]
    assert len(set(first_two[:4])) == 4, "every pair comes up before any comes up twice"
    assert rounds[0] == round_pairs(pairs, 1, 3, seed=7), "the order is the seed's"


def test_conversation_advantages_are_group_relative():
    group = [talk("t1", "p1", i, s, ["q"]) for i, s in enumerate([1.0, 3.0, 5.0])]
    other = [talk("t2", "p1", i, s, ["q", "q2"]) for i, s in enumerate([-2.0, -2.0])]
    raw = conversation_advantages(group + other, normalize=False)
    assert [raw[("t1|p1", i)] for i in range(3)] == [[-2.0], [0.0], [2.0]]
    assert raw[("t2|p1", 0)] == [0.0, 0.0], "a group whose rewards tie teaches nothing"
    scaled = conversation_advantages(group, normalize=True)
    spread = (8 / 3) ** 0.5
    assert scaled[("t1|p1", 2)][0] == pytest.approx(2.0 / spread)
    costly = conversation_advantages(
        [talk("t1", "p1", 0, 1.0, ["a", "b"]), talk("t1", "p1", 1, 1.0, ["a"])],
        turn_cost=0.5,
        normalize=False,
    )
    assert costly[("t1|p1", 0)] == [-0.25, -0.25] and costly[("t1|p1", 1)] == [0.25]


def test_turn_advantages_credit_each_question_with_what_it_still_brought():
    # Conversation 0: prefix scores 0 (none asked), 4 (after q1); final 5. Conversation 1: 0, 1; 3.
    # Conversation 2 answered at once: score 0, its answer is its only turn (reward to go 0).
    scored = [
        talk("t", "p", 0, 5.0, ["q1", "q2"]),
        talk("t", "p", 1, 3.0, ["q1", "q2"]),
        talk("t", "p", 2, 0.0, [], response="An answer."),
    ]
    prefixes = {("t|p", 0, 0): 0.0, ("t|p", 0, 1): 4.0, ("t|p", 1, 0): 0.0, ("t|p", 1, 1): 1.0}
    got = turn_advantages(scored, prefixes, normalize=False)
    # reward to go: c0 [5, 1], c1 [3, 2], c2 [0]; baselines [8/3, 1]
    assert got[("t|p", 0)] == pytest.approx([5 - 8 / 3, 0.0])
    assert got[("t|p", 1)] == pytest.approx([3 - 8 / 3, 1.0])
    assert got[("t|p", 2)] == pytest.approx([-8 / 3])
    first = conversation_advantages(scored, normalize=False)
    assert [got[("t|p", i)][0] for i in range(3)] == pytest.approx(
        [first[("t|p", i)][0] for i in range(3)]
    ), "the first turn's credit is the episode's advantage"


def test_trained_tokens_decode_to_the_questioners_own_turns(dataset, tiny_tokenizer):
    pair = dataset.pairs("A")[0]
    task, persona = pair.task.task_id, pair.persona.persona_id
    scored = [
        talk(task, persona, 0, 2.0, ["What do you like?", "How often?"]),
        talk(task, persona, 1, 0.0, ["Where do you live?"], response="Then try the park."),
    ]
    advantages = {(pair.pair_id, 0): [1.5, -0.5], (pair.pair_id, 1): [0.25, -1.0]}
    examples, cut = policy_examples(
        scored, advantages, [pair], QUESTIONER_FEWSHOT, tiny_tokenizer, 4096
    )
    assert cut == 0 and len(examples) == 2
    for example, turns in zip(
        examples,
        ([("What do you like?", 1.5), ("How often?", -0.5)], [("Where do you live?", 0.25), ("Then try the park.", -1.0)]),
    ):  # fmt: skip
        ids, weights = example["input_ids"], example["weights"]
        for text, weight in turns:
            carried = [i for i, w in zip(ids, weights) if w == weight]
            assert tiny_tokenizer.decode(carried).replace("<|im_end|>", "").strip() == text
        trained = tiny_tokenizer.decode([i for i, t in zip(ids, example["trained"]) if t])
        assert "answer to" not in trained and pair.task.text not in trained
        assert "podcast" not in trained, "the few-shot examples carry no loss"
    messages, trainable = online_chat(QUESTIONER_FEWSHOT, pair.task.text, scored[1])
    assert messages[-1] == {"role": "assistant", "content": "Then try the park."}
    assert [messages[i]["content"] for i in trainable] == [
        "Where do you live?",
        "Then try the park.",
    ]


def test_loss_matches_a_hand_computation():
    logp = torch.tensor([[-1.0, -2.0, -0.5]])
    ref = torch.tensor([[-1.5, -2.0, -0.1]])
    weights = torch.tensor([[0.0, 2.0, -1.0]])
    trained = torch.tensor([[0.0, 1.0, 1.0]])
    loss, policy, kl = online_loss(logp, ref, weights, trained, kl_coef=0.1, tokens=2)
    expected_policy = -(2.0 * -2.0 + -1.0 * -0.5)
    delta = -0.1 - -0.5
    expected_kl = (0.0) + (torch.tensor(delta).exp().item() - delta - 1)
    assert policy.item() == pytest.approx(expected_policy)
    assert kl.item() == pytest.approx(expected_kl)
    assert loss.item() == pytest.approx((expected_policy + 0.1 * expected_kl) / 2)


def test_an_update_moves_the_policy_toward_its_advantages(tiny_dir, tiny_tokenizer, tmp_path):
    from transformers import AutoModelForCausalLM

    ids = tiny_tokenizer("hello world friend", add_special_tokens=False)["input_ids"]
    ids = (ids * 4)[:12]
    good = {"input_ids": ids, "weights": [0.0] + [1.0] * 11, "trained": [0] + [1] * 11}
    bad = {"input_ids": ids[::-1], "weights": [0.0] + [-1.0] * 11, "trained": [0] + [1] * 11}
    online = OnlineConfig(learning_rate=1e-2, kl_coef=0.0)
    train = TrainConfig(batch_size=1, bf16=False)

    def logprob_of(path, example):
        model = AutoModelForCausalLM.from_pretrained(path).eval()
        with torch.no_grad():
            tensor = torch.tensor([example["input_ids"]])
            return token_logprobs(model, tensor, torch.ones_like(tensor), False).sum().item()

    metrics = policy_update(
        [good, bad], str(tiny_dir), str(tiny_dir), tmp_path / "p1", online, train, 0
    )
    assert metrics["kl"] == pytest.approx(0.0, abs=1e-6), "the first step starts at the reference"
    assert logprob_of(tmp_path / "p1", good) > logprob_of(tiny_dir, good)
    assert logprob_of(tmp_path / "p1", bad) < logprob_of(tiny_dir, bad)
    assert (tmp_path / "p1" / OPTIMIZER_STATE).exists()
    again = policy_update(
        [good], str(tmp_path / "p1"), str(tiny_dir), tmp_path / "p2", online, train, 0
    )
    assert again["kl"] > 0, "a moved policy is penalized toward the reference"
    state = torch.load(tmp_path / "p2" / OPTIMIZER_STATE, weights_only=True)
    assert next(iter(state["state"].values()))["step"].item() == 2, "the moments were continued"


def test_a_lora_update_continues_its_adapter_against_the_base_without_it(
    tiny_dir, tiny_tokenizer, tmp_path
):
    from star_gate.config import LoraConfig

    ids = (tiny_tokenizer("hello world friend", add_special_tokens=False)["input_ids"] * 4)[:12]
    good = {"input_ids": ids, "weights": [0.0] + [1.0] * 11, "trained": [0] + [1] * 11}
    online = OnlineConfig(learning_rate=1e-2, kl_coef=0.1)
    train = TrainConfig(batch_size=1, bf16=False, lora=LoraConfig(enabled=True, r=4))
    first = policy_update([good], str(tiny_dir), str(tiny_dir), tmp_path / "p1", online, train, 0)
    assert first["kl"] == pytest.approx(0.0, abs=1e-6), "a new adapter starts at the reference"
    assert (tmp_path / "p1" / "adapter" / "adapter_config.json").exists()
    assert (tmp_path / "p1" / "model.safetensors").exists(), "sampling loads the merged model"
    second = policy_update(
        [good], str(tmp_path / "p1"), str(tiny_dir), tmp_path / "p2", online, train, 0
    )
    assert second["kl"] > 0, "the adapter was continued, not started anew"
    state = torch.load(tmp_path / "p2" / OPTIMIZER_STATE, weights_only=True)
    assert next(iter(state["state"].values()))["step"].item() == 2


def _online_config(tiny_config, tmp_path, tiny_dir, dataset_dir, name):
    return tiny_config(
        tmp_path / name,
        tiny_dir,
        dataset_dir,
        iterations=1,
        loop="online",
        online={"rounds": 2, "pairs_per_round": 2, "learning_rate": 1e-3, "per_turn": True},
        train={"bf16": False},
        evaluate={"conversations_per_pair": 1, "random_persona": False, "win_rates": False},
    )


def test_online_run_resumes_after_a_crash_between_rounds_with_equal_records(
    tiny_config, tmp_path, tiny_dir, dataset_dir
):
    from star_gate.pipeline import Pipeline
    from star_gate.report import write_report

    whole = _online_config(tiny_config, tmp_path, tiny_dir, dataset_dir, "whole")
    with Pipeline(whole) as pipeline:
        pipeline.run_all()  # the rounds, then Q_1's evaluation on its checkpoint
        rounds = pipeline.results().online_rounds()
        assert pipeline.results().iterations() == [0, 1]
    report = write_report([tmp_path / "whole" / "run"]).read_text()
    assert "## Online rounds" in report and "online_rewards.png" in report
    assert [(k, r) for k, r, _ in rounds] == [(1, 1), (1, 2)]
    assert all({"reward", "kl", "loss", "grad_norm"} <= entry.keys() for _, _, entry in rounds)
    crashed = _online_config(tiny_config, tmp_path, tiny_dir, dataset_dir, "crashed")
    with Pipeline(crashed) as pipeline:  # round 1 finishes, then the process "dies"
        pipeline._online_round(1, 1, str(tiny_dir))
    with Pipeline(crashed) as pipeline:
        pipeline.online_stage(1)
    for name in ("round_001.jsonl", "round_002.jsonl", "round_002_prefixes.jsonl"):
        path = f"run/iter_1/online/{name}"
        assert (tmp_path / "whole" / path).read_bytes() == (
            tmp_path / "crashed" / path
        ).read_bytes()
    weights = "run/iter_1/checkpoint/model.safetensors"
    assert (tmp_path / "whole" / weights).read_bytes() == (
        tmp_path / "crashed" / weights
    ).read_bytes()
    leftovers = sorted(p.name for p in (tmp_path / "crashed/run/iter_1/online").iterdir())
    assert not [n for n in leftovers if n.endswith(("_policy", ".partial"))]


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["simulate.conversations_per_pair=1"], "must be at least 2"),
        (["train.prompt=questioner_plain"], "leave train.prompt empty"),
        (["online.kl_coef=-0.1"], "online.kl_coef"),
        (["select.turn_cost=-1"], "select.turn_cost"),
    ],
)
def test_impossible_online_settings_are_refused(
    fake_config_file, dataset_dir, tmp_path, overrides, message
):
    from star_gate.config import ConfigError, load_config

    path = fake_config_file(tmp_path, dataset_dir)
    with pytest.raises(ConfigError, match=message):
        load_config(path, ["loop=online", *overrides])
    load_config(path, ["loop=online"])  # the same config without the override is fine


def test_a_launched_online_update_takes_no_sharded_config(fake_config_file, dataset_dir, tmp_path):
    from star_gate.config import ConfigError, load_config
    from star_gate.training.launch import check_launcher

    path = fake_config_file(tmp_path, dataset_dir)
    sharded = [
        "loop=online",
        "train.distributed.launcher=accelerate",
        f"train.distributed.accelerate_config={ACCELERATE / 'fsdp.yaml'}",
    ]
    config = load_config(path, sharded)
    with pytest.raises(ConfigError, match="data parallel"):
        check_launcher(config.train, online=True)
    check_launcher(config.train, online=False)  # the offline loop's fine-tune can shard
