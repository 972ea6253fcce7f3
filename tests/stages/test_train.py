"""Training: loss only on the questioner's turns, and a fine-tune that writes a loadable checkpoint."""

from __future__ import annotations

import copy

import pytest
import torch

from star_gate.config import LoraConfig, TrainConfig
from star_gate.data.records import Conversation
from star_gate.roles.prompts import QUESTIONER_FEWSHOT
from star_gate.stages.train import build_examples, tokenize_with_loss_mask, training_chat
from star_gate.training.finetune import finetune

END = "<|im_end|>\n"
TASK = "Plan a weekend trip for me."
QUESTIONS = ["Who is coming along on the trip?", "Do you prefer mountains or beaches?"]
ANSWERS = ["My sister and her dog.", "Mountains, definitely."]
FINAL = "Book a dog-friendly cabin in the Alps for Saturday."


def two_turns(response: str | None = FINAL) -> Conversation:
    c = Conversation(task_id="t", persona_id="p", sample_index=0, target_turns=2, response=response)
    for q, a in zip(QUESTIONS, ANSWERS):
        c = c.with_turn("questioner", q).with_turn("roleplayer", a)
    return c


def masked_text(tokenizer, ids, mask) -> str:
    return tokenizer.decode([i for i, m in zip(ids, mask) if m], skip_special_tokens=False)


def test_training_chat_marks_questions_and_final_answer():
    messages, trainable = training_chat(QUESTIONER_FEWSHOT, TASK, two_turns())
    assert [messages[i]["content"] for i in trainable] == [*QUESTIONS, FINAL]
    assert all(messages[i]["role"] == "assistant" for i in trainable)
    # few-shot assistant turns are context, not targets
    few_shot_assistant = [
        i
        for i, m in enumerate(messages[: len(QUESTIONER_FEWSHOT.opening())])
        if m["role"] == "assistant"
    ]
    assert few_shot_assistant and not set(few_shot_assistant) & set(trainable)
    assert messages[-2]["content"].endswith(f"answer my original request: {TASK}")


def test_training_chat_without_final_answer_trains_questions_only():
    messages, trainable = training_chat(QUESTIONER_FEWSHOT, TASK, two_turns(response=None))
    assert [messages[i]["content"] for i in trainable] == QUESTIONS
    assert messages[-1] == {"role": "user", "content": ANSWERS[-1]}


def test_loss_mask_covers_exactly_questions_and_final_answer(tiny_tokenizer):
    messages, trainable = training_chat(QUESTIONER_FEWSHOT, TASK, two_turns())
    ids, mask, truncated = tokenize_with_loss_mask(
        tiny_tokenizer, messages, trainable, max_length=4096
    )
    assert not truncated and len(ids) == len(mask) and set(mask) == {0, 1}
    full = tiny_tokenizer.apply_chat_template(messages, tokenize=False)
    assert tiny_tokenizer.decode(ids, skip_special_tokens=False) == full  # ids are the whole chat
    text = masked_text(tiny_tokenizer, ids, mask)
    assert text == "".join(t + END for t in [*QUESTIONS, FINAL])
    for context in [*ANSWERS, TASK, QUESTIONER_FEWSHOT.system, "<|im_start|>", "assistant\n"]:
        assert context not in text
    for _, example in QUESTIONER_FEWSHOT.few_shot:
        assert example not in text


def test_loss_mask_without_final_answer(tiny_tokenizer):
    messages, trainable = training_chat(QUESTIONER_FEWSHOT, TASK, two_turns(response=None))
    ids, mask, _ = tokenize_with_loss_mask(tiny_tokenizer, messages, trainable, max_length=4096)
    assert masked_text(tiny_tokenizer, ids, mask) == "".join(q + END for q in QUESTIONS)


def test_long_sequences_keep_their_end(tiny_tokenizer):
    messages, trainable = training_chat(QUESTIONER_FEWSHOT, TASK, two_turns())
    ids, mask, _ = tokenize_with_loss_mask(tiny_tokenizer, messages, trainable, max_length=4096)
    cut_ids, cut_mask, truncated = tokenize_with_loss_mask(
        tiny_tokenizer, messages, trainable, max_length=64
    )
    assert truncated
    assert cut_ids == ids[-64:] and cut_mask == mask[-64:]
    assert masked_text(tiny_tokenizer, cut_ids, cut_mask).endswith(FINAL + END)


def test_template_not_prefix_consistent_is_refused(tiny_tokenizer):
    tokenizer = copy.deepcopy(tiny_tokenizer)
    # Writes the number of messages first, so no rendering of a prefix is a prefix of the whole.
    tokenizer.chat_template = (
        "{{ messages|length }}{% for message in messages %}{{ message['role'] + ': ' + message['content'] + '\n' }}"
        "{% endfor %}{% if add_generation_prompt %}{{ 'assistant: ' }}{% endif %}"
    )
    messages, trainable = training_chat(QUESTIONER_FEWSHOT, TASK, two_turns())
    with pytest.raises(ValueError, match="concatenation of its prefixes"):
        tokenize_with_loss_mask(tokenizer, messages, trainable, max_length=4096)


def test_build_examples(dataset, tiny_tokenizer):
    pairs = dataset.pairs("A")
    convs = [
        Conversation(p.task.task_id, p.persona.persona_id, 0, 1, response="Answer.")
        .with_turn("questioner", "Q?")
        .with_turn("roleplayer", "A.")
        for p in pairs
    ]
    examples, truncated = build_examples(
        convs, pairs, QUESTIONER_FEWSHOT, tiny_tokenizer, max_length=4096
    )
    assert truncated == 0 and len(examples) == len(pairs)
    for example, pair in zip(examples, pairs):
        assert set(example) == {"input_ids", "assistant_masks"}
        assert (
            masked_text(tiny_tokenizer, example["input_ids"], example["assistant_masks"])
            == f"Q?{END}Answer.{END}"
        )
        assert pair.task.text in tiny_tokenizer.decode(example["input_ids"])
    _, truncated = build_examples(convs, pairs, QUESTIONER_FEWSHOT, tiny_tokenizer, max_length=100)
    assert truncated == len(pairs)


def test_finetune_writes_a_loadable_checkpoint_that_differs_from_base(
    tiny_dir, tiny_tokenizer, tmp_path
):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    messages, trainable = training_chat(QUESTIONER_FEWSHOT, TASK, two_turns())
    ids, mask, _ = tokenize_with_loss_mask(tiny_tokenizer, messages, trainable, max_length=4096)
    examples = [{"input_ids": ids, "assistant_masks": mask}] * 4
    out = tmp_path / "checkpoint"
    metrics = finetune(
        examples,
        str(tiny_dir),
        out,
        TrainConfig(
            learning_rate=1e-3,
            epochs=1,
            batch_size=2,
            scheduler="cosine",
            warmup_ratio=0.1,
            validation_fraction=0.25,
            bf16=False,
        ),
        seed=0,
    )
    assert metrics["examples"] == 3 and metrics["steps"] == 2
    assert metrics["train_loss"] > 0 and "eval_loss" in metrics

    base = AutoModelForCausalLM.from_pretrained(tiny_dir)
    tuned = AutoModelForCausalLM.from_pretrained(out)
    base_weights, tuned_weights = base.state_dict(), tuned.state_dict()
    assert base_weights.keys() == tuned_weights.keys()
    assert any(not torch.equal(base_weights[k], tuned_weights[k]) for k in base_weights)
    tokenizer = AutoTokenizer.from_pretrained(out)
    assert tokenizer.chat_template == tiny_tokenizer.chat_template
    assert tokenizer.eos_token == "<|im_end|>"
    assert not TrainConfig().lora.enabled  # full fine-tuning is the default
    assert not (out / "adapter").exists()
    assert metrics["trainable_params"] == sum(p.numel() for p in base.parameters())


def test_finetune_trains_only_on_masked_tokens(tiny_dir, tiny_tokenizer, tmp_path, monkeypatch):
    """The labels the trainer actually uses are -100 everywhere the loss mask is 0."""
    import trl

    seen = {}

    class Recording(trl.SFTTrainer):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            seen["rows"] = list(self.train_dataset)

    monkeypatch.setattr(trl, "SFTTrainer", Recording)
    messages, trainable = training_chat(QUESTIONER_FEWSHOT, TASK, two_turns())
    ids, mask, _ = tokenize_with_loss_mask(tiny_tokenizer, messages, trainable, max_length=4096)
    finetune(
        [{"input_ids": ids, "assistant_masks": mask}] * 2,
        str(tiny_dir),
        tmp_path / "ckpt",
        TrainConfig(
            learning_rate=1e-4,
            epochs=1,
            batch_size=2,
            scheduler="constant",
            warmup_ratio=0.0,
            validation_fraction=0.0,
            bf16=False,
        ),
        seed=0,
    )
    for row in seen["rows"]:
        assert row["input_ids"] == ids
        assert row["labels"] == [i if m else -100 for i, m in zip(ids, mask)]


LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@pytest.fixture(scope="module")
def lora_run(tiny_dir, tiny_tokenizer, tmp_path_factory):
    """One LoRA fine-tune of the tiny model: (metrics, checkpoint folder)."""
    messages, trainable = training_chat(QUESTIONER_FEWSHOT, TASK, two_turns())
    ids, mask, _ = tokenize_with_loss_mask(tiny_tokenizer, messages, trainable, max_length=4096)
    out = tmp_path_factory.mktemp("lora") / "checkpoint"
    cfg = TrainConfig(
        learning_rate=1e-2,  # large, so that two steps move the adapters visibly
        batch_size=2,
        scheduler="constant",
        warmup_ratio=0.0,
        validation_fraction=0.0,
        bf16=False,
        lora=LoraConfig(enabled=True, r=2, alpha=4, dropout=0.0),  # r=2: the tiny model is 32 wide
    )
    metrics = finetune(
        [{"input_ids": ids, "assistant_masks": mask}] * 4, str(tiny_dir), out, cfg, seed=0
    )
    return metrics, out


def test_lora_saves_adapter_and_a_merged_checkpoint(lora_run, tiny_dir):
    from transformers import AutoModelForCausalLM

    metrics, out = lora_run
    assert metrics["steps"] == 2 and metrics["train_loss"] > 0
    assert (out / "adapter" / "adapter_config.json").is_file()
    assert any(p.name.startswith("adapter_model") for p in (out / "adapter").iterdir())
    base = AutoModelForCausalLM.from_pretrained(tiny_dir).state_dict()
    merged = AutoModelForCausalLM.from_pretrained(out).state_dict()
    assert base.keys() == merged.keys()  # a plain checkpoint: no lora_A / lora_B left
    changed = {k for k in base if not torch.equal(base[k], merged[k])}
    targeted = {k for k in base if k.split(".")[-2] in LORA_TARGETS}
    assert targeted and changed == targeted  # every linear layer of every block, nothing else
    unchanged = [k for k in base if "embed_tokens" in k or "norm" in k or k.startswith("lm_head")]
    assert unchanged and not changed & set(unchanged)


def test_lora_adapter_on_base_matches_merged_checkpoint(lora_run, tiny_dir):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    _, out = lora_run
    base = AutoModelForCausalLM.from_pretrained(tiny_dir)
    rebuilt = PeftModel.from_pretrained(base, out / "adapter").merge_and_unload().eval()
    merged = AutoModelForCausalLM.from_pretrained(out).eval()
    ids = torch.arange(3, 40).unsqueeze(0)
    with torch.no_grad():
        torch.testing.assert_close(rebuilt(ids).logits, merged(ids).logits, rtol=1e-5, atol=1e-5)


def test_lora_trains_a_small_share_of_the_parameters(lora_run, tiny_dir):
    from transformers import AutoModelForCausalLM

    metrics, _ = lora_run
    total = sum(p.numel() for p in AutoModelForCausalLM.from_pretrained(tiny_dir).parameters())
    assert 0 < metrics["trainable_params"] * 10 < total


@pytest.mark.parametrize(
    "bad", [{"r": 0}, {"alpha": 0}, {"dropout": 1.0}, {"dropout": -0.1}, {"rank": 8}]
)
def test_lora_config_refuses_bad_values(bad):
    from pydantic import ValidationError

    with pytest.raises(ValidationError):
        LoraConfig(**bad)


@pytest.mark.parametrize(("flags", "native"), [(set(), False), ({"amx_bf16"}, True)])
def test_unset_bf16_trains_in_bf16_only_where_the_cpu_has_it(monkeypatch, flags, native):
    from star_gate.backends import hf
    from star_gate.training.finetune import train_in_bf16

    monkeypatch.setattr(hf, "cpu_flags", lambda: flags)
    monkeypatch.setattr("torch.cuda.is_available", lambda: False)
    assert train_in_bf16(TrainConfig()) is native
    assert train_in_bf16(TrainConfig(bf16=True)) is True
    assert train_in_bf16(TrainConfig(bf16=False)) is False
