"""Training speed options change speed only: padding-free batches and gradient checkpointing give
the loss of a plain padded batch, and the trained questioners' prompt is chosen by train.prompt."""

from __future__ import annotations

import pytest
import torch
from conftest import build_tiny_model

from star_gate.config import ConfigError, RunConfig, TrainConfig, load_config
from star_gate.data.records import Conversation
from star_gate.roles.prompts import QUESTIONER_FEWSHOT, QUESTIONER_PLAIN
from star_gate.stages.train import tokenize_with_loss_mask, training_chat
from star_gate.training.finetune import finetune

TASKS = ["Plan a weekend trip for me.", "Recommend me a book.", "What should I cook tonight?"]
TURNS = [
    [("Who is coming along?", "My sister.")],
    [
        ("Do you like fiction?", "Yes, mostly long historical novels set in Spain or Portugal."),
        ("Any favourite authors?", "Not really."),
    ],
    [],
]
FINALS = [
    "Book a cabin.",
    "Try a long historical novel set in Lisbon.",
    "Make a lentil soup with bread.",
]


def conversation(turns, final) -> Conversation:
    c = Conversation(
        task_id="t", persona_id="p", sample_index=0, target_turns=len(turns), response=final
    )
    for q, a in turns:
        c = c.with_turn("questioner", q).with_turn("roleplayer", a)
    return c


def examples_of_different_lengths(tokenizer, template=QUESTIONER_PLAIN) -> list[dict]:
    examples = []
    for task, turns, final in zip(TASKS, TURNS, FINALS):
        messages, trainable = training_chat(template, task, conversation(turns, final))
        ids, mask, _ = tokenize_with_loss_mask(tokenizer, messages, trainable, max_length=4096)
        examples.append({"input_ids": ids, "assistant_masks": mask})
    assert len({len(e["input_ids"]) for e in examples}) == len(examples)
    return examples


@pytest.fixture(scope="module")
def sharp_dir(tmp_path_factory, tiny_tokenizer):
    """The conftest tiny Llama with larger initial weights (initializer_range 0.3), saved: its
    log-probs depend strongly on context, so attention leaking across packed examples shows."""
    folder = tmp_path_factory.mktemp("sharp-model")
    build_tiny_model(tiny_tokenizer, initializer_range=0.3).save_pretrained(folder)
    tiny_tokenizer.save_pretrained(folder)
    return folder


def first_loss(examples, model_dir, tmp_path, batches=None, **options) -> float:
    """train_loss of one step over all examples in one batch: the loss of the initial weights.

    batches: a list that receives the shape of input_ids and the keys of every training batch."""
    cfg = TrainConfig(
        **{
            "learning_rate": 1e-9,
            "epochs": 1,
            "batch_size": len(examples),
            "scheduler": "constant",
            "warmup_ratio": 0.0,
            "validation_fraction": 0.0,
            "bf16": False,
            **options,
        }
    )
    name = "-".join(f"{k}={v}" for k, v in options.items())
    if batches is None:
        metrics = finetune(examples, str(model_dir), tmp_path / name, cfg, seed=0)
    else:
        import trl

        inner = trl.SFTTrainer.compute_loss

        def spy(self, model, inputs, *args, **kwargs):
            if model.training:
                batches.append((tuple(inputs["input_ids"].shape), set(inputs)))
            return inner(self, model, inputs, *args, **kwargs)

        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(trl.SFTTrainer, "compute_loss", spy)
            metrics = finetune(examples, str(model_dir), tmp_path / name, cfg, seed=0)
    assert metrics["steps"] == 1
    assert metrics["train_seconds"] is not None and metrics["train_seconds"] > 0
    return metrics["train_loss"]


def manual_losses(model_dir, examples) -> tuple[float, float]:
    """Mean cross-entropy over the loss-bearing tokens of all examples: each example alone, and
    (what a padding-free batch must not compute) all packed into one causal sequence."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()

    def loss_sum(ids, labels, positions):
        with torch.no_grad():
            logits = (
                model(input_ids=torch.tensor([ids]), position_ids=torch.tensor([positions]))
                .logits[0]
                .float()
            )
        logp = torch.log_softmax(logits[:-1], -1)
        target = torch.tensor(labels[1:])
        keep = target != -100
        return -logp[keep].gather(-1, target[keep, None]).sum().item(), int(keep.sum())

    total, count = 0.0, 0
    for e in examples:
        labels = [i if m else -100 for i, m in zip(e["input_ids"], e["assistant_masks"])]
        s, n = loss_sum(e["input_ids"], labels, list(range(len(labels))))
        total, count = total + s, count + n
    packed_ids = [i for e in examples for i in e["input_ids"]]
    packed_labels = [
        i if m else -100 for e in examples for i, m in zip(e["input_ids"], e["assistant_masks"])
    ]
    packed_positions = [p for e in examples for p in range(len(e["input_ids"]))]
    leaky, leaky_count = loss_sum(packed_ids, packed_labels, packed_positions)
    assert leaky_count == count  # every example starts with a context token (no loss on it)
    return total / count, leaky / count


def test_padding_free_loss_equals_padded_loss(sharp_dir, tiny_tokenizer, tmp_path):
    """Proves attention does not cross packed examples: a leak changes this loss by far more."""
    examples = examples_of_different_lengths(tiny_tokenizer)
    correct, leaky = manual_losses(sharp_dir, examples)
    assert abs(leaky - correct) > 1e-2  # the check below could see a leak
    padded_batches, packed_batches = [], []
    padded = first_loss(examples, sharp_dir, tmp_path, padded_batches, padding_free=False)
    packed = first_loss(examples, sharp_dir, tmp_path, packed_batches, padding_free=True)
    total = sum(len(e["input_ids"]) for e in examples)
    longest = max(len(e["input_ids"]) for e in examples)
    assert [shape for shape, _ in padded_batches] == [(len(examples), longest)]
    assert [shape for shape, _ in packed_batches] == [(1, total)]  # really one packed row
    assert "position_ids" in packed_batches[0][1]
    assert padded == pytest.approx(correct, abs=1e-4)
    assert packed == pytest.approx(correct, abs=1e-4)
    assert packed == pytest.approx(padded, abs=1e-4)


def test_gradient_checkpointing_gives_the_same_loss(sharp_dir, tiny_tokenizer, tmp_path):
    examples = examples_of_different_lengths(tiny_tokenizer)
    plain = first_loss(
        examples, sharp_dir, tmp_path, gradient_checkpointing=False, padding_free=False
    )
    checkpointed = first_loss(
        examples, sharp_dir, tmp_path, gradient_checkpointing=True, padding_free=False
    )
    assert checkpointed == pytest.approx(plain, abs=1e-4)
    both = first_loss(examples, sharp_dir, tmp_path, gradient_checkpointing=True, padding_free=True)
    assert both == pytest.approx(plain, abs=1e-4)


def test_one_example_at_a_time_gives_the_batch_loss(sharp_dir, tiny_tokenizer, tmp_path):
    """batch_size 1 with gradient_accumulation N (the demo's low-memory setting) is one update on
    the token mean over all N examples, as one batch of N is: no padding, nothing packed."""
    examples = examples_of_different_lengths(tiny_tokenizer)
    batched = first_loss(examples, sharp_dir, tmp_path, padding_free=False)
    one_at_a_time = []
    single = first_loss(
        examples,
        sharp_dir,
        tmp_path,
        one_at_a_time,
        batch_size=1,
        gradient_accumulation=len(examples),
    )
    assert single == pytest.approx(batched, abs=1e-4)
    lengths = sorted(len(e["input_ids"]) for e in examples)
    assert sorted(shape[1] for shape, _ in one_at_a_time) == lengths
    assert all(shape[0] == 1 and "position_ids" not in keys for shape, keys in one_at_a_time)


def test_speed_option_defaults():
    cfg = TrainConfig()
    assert cfg.gradient_checkpointing is False
    assert cfg.padding_free is True
    assert cfg.prompt == ""


# -- the trained questioners' prompt ------------------------------------------------------------


def config(questioner_prompt: str = "", train_prompt: str = "") -> RunConfig:
    return RunConfig.model_validate(
        {"roles": {"questioner": {"prompt": questioner_prompt}}, "train": {"prompt": train_prompt}}
    )


def test_questioner_prompt_for_q0_and_trained_questioners():
    # nothing set: the paper's few-shot prompt for every questioner
    assert config().questioner_prompt(trained=False) == QUESTIONER_FEWSHOT.name
    assert config().questioner_prompt(trained=True) == QUESTIONER_FEWSHOT.name
    # roles.questioner.prompt only: both use it
    plain = config(questioner_prompt="questioner_plain")
    assert plain.questioner_prompt(trained=False) == "questioner_plain"
    assert plain.questioner_prompt(trained=True) == "questioner_plain"
    # train.prompt: the trained questioners only; Q_0 keeps roles.questioner.prompt
    split = config(questioner_prompt="questioner_fewshot", train_prompt="questioner_plain")
    assert split.questioner_prompt(trained=False) == "questioner_fewshot"
    assert split.questioner_prompt(trained=True) == "questioner_plain"
    assert (
        config(train_prompt="questioner_plain").questioner_prompt(trained=False)
        == "questioner_fewshot"
    )


def test_unknown_train_prompt_is_refused():
    with pytest.raises(ConfigError, match="questioner_nonexistent"):
        load_config(None, ["train.prompt=questioner_nonexistent"])
    with pytest.raises(ConfigError, match="train"):
        load_config(None, ["train.prompt=questioner_nonexistent"])
    assert load_config(None, ["train.prompt=questioner_plain"]).train.prompt == "questioner_plain"
