"""DPO: preference pairs from one (task, persona), the SFT loss mask on chosen and rejected alike,
and TRL's loss computed over exactly those tokens."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from star_gate.config import TrainConfig
from star_gate.data.records import Conversation
from star_gate.roles.prompts import QUESTIONER_FEWSHOT, QUESTIONER_PLAIN
from star_gate.stages import preference_pairs, select_preference_pairs
from star_gate.stages.preference import build_preference_examples
from star_gate.training.dpo import PreferenceCollator, masked_dpo_trainer
from star_gate.training.finetune import finetune

END = "<|im_end|>\n"


def scored(task, persona, logprobs):
    return [
        Conversation(task, persona, sample_index=i, target_turns=1, logprob=lp)
        for i, lp in enumerate(logprobs)
    ]


def talk(pair, sample_index, logprob, questions, answers, final):
    c = Conversation(
        pair.task.task_id, pair.persona.persona_id, sample_index, len(questions), logprob=logprob
    )
    for q, a in zip(questions, answers):
        c = c.with_turn("questioner", q).with_turn("roleplayer", a)
    return c.replace(response=final)


# -- selection -----------------------------------------------------------------------------------


def test_best_is_paired_with_worst_then_second_with_second_worst():
    convs = scored("t1", "p1", [-5.0, -1.0, -3.0, -2.0, -9.0]) + scored("t2", "p1", [-4.0, -6.0])
    kept = select_preference_pairs(convs, k=2)
    assert [(c.pair_id, c.sample_index) for c in kept] == [
        ("t1|p1", 1),
        ("t1|p1", 4),  # -1 against -9
        ("t1|p1", 3),
        ("t1|p1", 0),  # -2 against -5; the median (-3) is left out
        ("t2|p1", 0),
        ("t2|p1", 1),  # a pair of two forms one preference pair
    ]
    assert [(c.sample_index, r.sample_index) for c, r in preference_pairs(kept)] == [
        (1, 4),
        (3, 0),
        (0, 1),
    ]


def test_pairs_within_the_margin_are_dropped():
    convs = scored("t1", "p1", [-1.0, -2.0, -1.5, -8.0]) + scored("t2", "p1", [-3.0, -3.0])
    kept = select_preference_pairs(convs, k=2, min_margin=1.0)
    # t1: -1 vs -8 (margin 7) kept, -1.5 vs -2 (0.5) dropped; t2: a tie is never a preference
    assert [(c.pair_id, c.sample_index) for c in kept] == [("t1|p1", 0), ("t1|p1", 3)]
    assert select_preference_pairs(scored("t3", "p1", [-1.0, -1.0]), k=1) == []


def test_records_that_are_not_pairs_are_refused():
    a, b = scored("t1", "p1", [-1.0, -2.0])
    other = scored("t2", "p1", [-3.0])[0]
    with pytest.raises(ValueError, match="not a \\(chosen, rejected\\) pair"):
        preference_pairs([a, other])
    with pytest.raises(ValueError, match="not a \\(chosen, rejected\\) pair"):
        preference_pairs([b, a])  # rejected first
    with pytest.raises(ValueError, match="odd number"):
        preference_pairs([a, b, a])


# -- examples and masks ----------------------------------------------------------------------------


@pytest.fixture
def preference_examples(dataset, tiny_tokenizer):
    pairs = dataset.pairs("A")
    chosen = talk(
        pairs[0],
        0,
        -1.0,
        ["Who is coming along?", "Mountains or sea?"],
        ["My sister and her dog.", "Mountains."],
        "A dog-friendly cabin in the Alps.",
    )
    rejected = talk(pairs[0], 1, -7.0, ["Anything else?"], ["I am a nurse."], "Go to Paris.")
    examples, truncated = build_preference_examples(
        [(chosen, rejected)], pairs, QUESTIONER_FEWSHOT, tiny_tokenizer, max_length=4096
    )
    assert truncated == 0
    return examples


def masked_text(tokenizer, ids, mask) -> str:
    return tokenizer.decode([i for i, m in zip(ids, mask) if m], skip_special_tokens=False)


def test_only_questions_and_final_answer_carry_loss_in_chosen_and_rejected(
    preference_examples, tiny_tokenizer
):
    [example] = preference_examples
    chosen = masked_text(tiny_tokenizer, example["chosen_ids"], example["chosen_mask"])
    rejected = masked_text(tiny_tokenizer, example["rejected_ids"], example["rejected_mask"])
    assert (
        chosen
        == f"Who is coming along?{END}Mountains or sea?{END}A dog-friendly cabin in the Alps.{END}"
    )
    assert rejected == f"Anything else?{END}Go to Paris.{END}"
    for side in ("chosen", "rejected"):  # the roleplayer's answers are context only
        whole = tiny_tokenizer.decode(example[f"{side}_ids"])
        assert ("My sister and her dog." if side == "chosen" else "I am a nurse.") in whole


def test_collator_puts_chosen_rows_first_with_the_masks_as_completion_mask(
    preference_examples, tiny_tokenizer
):
    examples = preference_examples * 2
    examples[1] = {**examples[1], "ref_chosen_logps": -3.0, "ref_rejected_logps": -4.0}
    examples[0] = {**examples[0], "ref_chosen_logps": -1.0, "ref_rejected_logps": -2.0}
    batch = PreferenceCollator(pad_token_id=tiny_tokenizer.pad_token_id)(examples)
    width = len(examples[0]["chosen_ids"])  # the chosen conversation is the longer one
    assert batch["input_ids"].shape == (4, width)
    for row, (side, example) in enumerate(
        [
            ("chosen", examples[0]),
            ("chosen", examples[1]),
            ("rejected", examples[0]),
            ("rejected", examples[1]),
        ]
    ):
        n = len(example[f"{side}_ids"])
        assert batch["input_ids"][row, :n].tolist() == example[f"{side}_ids"]
        assert batch["completion_mask"][row, :n].tolist() == example[f"{side}_mask"]
        assert batch["attention_mask"][row].tolist() == [1] * n + [0] * (width - n)
        assert not batch["completion_mask"][row, n:].any()  # padding never carries loss
    assert batch["ref_chosen_logps"].tolist() == [-1.0, -3.0]
    assert batch["ref_rejected_logps"].tolist() == [-2.0, -4.0]


# -- the loss ------------------------------------------------------------------------------------


def sequence_logps(model, ids: list[int], mask: list[int]) -> torch.Tensor:
    """Sum of log p(token) over the tokens the mask marks, by a plain forward."""
    logits = model(torch.tensor([ids])).logits[0, :-1].float()
    token_logps = logits.log_softmax(-1).gather(1, torch.tensor(ids[1:])[:, None])[:, 0]
    return (token_logps * torch.tensor(mask[1:])).sum()


@pytest.mark.parametrize("sft_weight", [0.0, 0.5])
def test_trl_loss_is_dpo_over_exactly_the_masked_tokens(
    preference_examples, tiny_dir, tiny_tokenizer, tmp_path, sft_weight
):
    """TRL's loss, computed from our masks, equals DPO (plus the NLL term) over exactly the masked
    tokens of chosen and rejected; a mask that also covered the roleplayer's tokens would differ."""
    from datasets import Dataset
    from transformers import AutoModelForCausalLM
    from trl import DPOConfig

    model = AutoModelForCausalLM.from_pretrained(tiny_dir, dtype=torch.float32)
    reference = AutoModelForCausalLM.from_pretrained(tiny_dir, dtype=torch.float32).eval()
    beta = 0.3
    args = DPOConfig(
        output_dir=str(tmp_path),
        beta=beta,
        precompute_ref_log_probs=True,
        report_to=[],
        max_length=None,
        loss_type=["sigmoid", "sft"] if sft_weight else ["sigmoid"],
        loss_weights=[1.0, sft_weight] if sft_weight else None,
        use_cpu=True,
    )
    trainer = masked_dpo_trainer(
        model=model,
        args=args,
        train_dataset=Dataset.from_list(preference_examples),
        processing_class=tiny_tokenizer,
        data_collator=PreferenceCollator(tiny_tokenizer.pad_token_id),
    )
    with torch.no_grad():  # the policy moves away from the reference, as after some training
        for parameter in model.parameters():
            parameter.add_(0.05 * torch.randn_like(parameter))
    model.eval()  # no dropout either way
    batch = next(iter(trainer.get_train_dataloader()))
    with torch.no_grad():
        loss = trainer.compute_loss(model, batch).item()

    [example] = preference_examples

    def expected(chosen_mask, rejected_mask):
        with torch.no_grad():
            chosen = sequence_logps(model, example["chosen_ids"], chosen_mask)
            rejected = sequence_logps(model, example["rejected_ids"], rejected_mask)
            ref_chosen = sequence_logps(reference, example["chosen_ids"], chosen_mask)
            ref_rejected = sequence_logps(reference, example["rejected_ids"], rejected_mask)
        dpo = -F.logsigmoid(beta * ((chosen - ref_chosen) - (rejected - ref_rejected)))
        nll = -chosen / sum(chosen_mask[1:])  # mean over the chosen's trained tokens
        return (dpo + sft_weight * nll).item()

    # TRL sums log-probs from its fused output head: float32 rounding differs by ~0.003 nats a
    # sequence, while one token more or less in either mask moves a sum by nats.
    assert loss == pytest.approx(
        expected(example["chosen_mask"], example["rejected_mask"]), abs=2e-3
    )
    logged = trainer._metrics["eval"]  # the policy's summed log-probs, as TRL's loss saw them
    with torch.no_grad():
        for side in ("chosen", "rejected"):
            ids, mask = example[f"{side}_ids"], example[f"{side}_mask"]
            assert logged[f"logps/{side}"][-1] == pytest.approx(
                sequence_logps(model, ids, mask).item(), abs=0.02
            )
            leaky = [1] * len(ids)  # the roleplayer's answers and the prompt would count too
            assert abs(logged[f"logps/{side}"][-1] - sequence_logps(model, ids, leaky).item()) > 10


def test_masked_trainer_equals_trl_on_single_turn_conversations(
    dataset, tiny_dir, tiny_tokenizer, tmp_path
):
    """On one question each, where TRL's own tokenization marks the same tokens, both trainers
    give the same loss."""
    from datasets import Dataset
    from transformers import AutoModelForCausalLM
    from trl import DPOConfig, DPOTrainer

    pair = dataset.pairs("A")[0]
    chosen = Conversation(pair.task.task_id, pair.persona.persona_id, 0, 1, logprob=-1.0).with_turn(
        "questioner", "Who is coming along?"
    )
    rejected = Conversation(
        pair.task.task_id, pair.persona.persona_id, 1, 1, logprob=-5.0
    ).with_turn("questioner", "Anything else?")
    ours, _ = build_preference_examples(
        [(chosen, rejected)], [pair], QUESTIONER_PLAIN, tiny_tokenizer, 4096
    )
    prompt = [*QUESTIONER_PLAIN.opening(), {"role": "user", "content": pair.task.text}]
    theirs = [
        {
            "prompt": prompt,
            "chosen": [{"role": "assistant", "content": "Who is coming along?"}],
            "rejected": [{"role": "assistant", "content": "Anything else?"}],
        }
    ]

    def loss_of(trainer):
        model = trainer.model
        with torch.no_grad():
            for parameter in model.parameters():  # the same move away from the reference
                parameter.add_(
                    0.05 * torch.randn_like(parameter, generator=torch.Generator().manual_seed(0))
                )
            return trainer.compute_loss(
                model.eval(), next(iter(trainer.get_train_dataloader()))
            ).item()

    def config():
        return DPOConfig(
            output_dir=str(tmp_path),
            precompute_ref_log_probs=True,
            report_to=[],
            max_length=None,
            use_cpu=True,
        )

    def load():
        return AutoModelForCausalLM.from_pretrained(tiny_dir, dtype=torch.float32)

    masked = masked_dpo_trainer(
        model=load(),
        args=config(),
        train_dataset=Dataset.from_list(ours),
        processing_class=tiny_tokenizer,
        data_collator=PreferenceCollator(tiny_tokenizer.pad_token_id),
    )
    plain = DPOTrainer(
        model=load(),
        args=config(),
        train_dataset=Dataset.from_list(theirs),
        processing_class=tiny_tokenizer,
    )
    assert loss_of(masked) == pytest.approx(loss_of(plain), abs=1e-5)


def test_dpo_finetune_writes_a_checkpoint_and_preference_metrics(
    preference_examples, tiny_dir, tmp_path
):
    from transformers import AutoModelForCausalLM

    out = tmp_path / "checkpoint"
    cfg = TrainConfig(
        objective="dpo",
        learning_rate=1e-3,
        epochs=2,
        batch_size=2,
        validation_fraction=0.0,
        bf16=False,
        dpo={"beta": 0.1, "sft_weight": 0.1},
    )
    metrics = finetune(preference_examples * 4, str(tiny_dir), out, cfg, seed=0)
    assert metrics["examples"] == 4 and metrics["steps"] == 4
    assert 0 <= metrics["preference_accuracies"] <= 1 and "preference_margins" in metrics
    base, tuned = (AutoModelForCausalLM.from_pretrained(p).state_dict() for p in (tiny_dir, out))
    assert any(not torch.equal(base[k], tuned[k]) for k in base)


def test_a_dpo_run_trains_on_pairs_and_resumes_without_redoing_anything(
    tiny_dir, tmp_path, dataset_factory, tiny_config
):
    from star_gate.pipeline import Pipeline

    config = tiny_config(
        tmp_path,
        tiny_dir,
        dataset_factory(tmp_path / "data"),
        iterations=1,
        roles={"judge": {"backend": "fake"}},
        simulate={"conversations_per_pair": 3},
        train={"objective": "dpo", "validation_fraction": 0.0},
        evaluate={"win_rates": False},
    )
    with Pipeline(config, progress=False) as pipeline:
        for stage in ("simulate", "score", "select", "regularize"):
            pipeline.run_stage(1, stage)
        run = pipeline.run
        scored = run.records("iter_1/score", Conversation.from_json)
        answered = run.records("iter_1/regularize", Conversation.from_json)
    pairs = preference_pairs(
        answered
    )  # chosen, rejected, pair after pair, each with its final answer
    assert len(pairs) == len({c.pair_id for c in scored}) == 4
    for chosen, rejected in pairs:
        group = [c.logprob for c in scored if c.pair_id == chosen.pair_id]
        assert (chosen.logprob, rejected.logprob) == (max(group), min(group))
        assert chosen.response is not None and rejected.response is not None
    before = {p: p.read_bytes() for p in run.root.rglob("*.jsonl")}

    with Pipeline(
        config, progress=False
    ) as pipeline:  # a rerun finishes the run, redoing nothing done
        pipeline.run_all()
        manifest = pipeline.run.manifest["stages"]
    assert {p: p.read_bytes() for p in before} == before
    assert manifest["iter_1/select"]["objective"] == "dpo"
    assert (
        manifest["iter_1/train"]["examples"] == 4
        and 0 <= manifest["iter_1/train"]["preference_accuracies"] <= 1
    )
    assert (run.root / "iter_1" / "checkpoint" / "config.json").exists()
