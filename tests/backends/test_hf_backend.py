"""The transformers backend on the tiny in-process model: batching changes nothing."""

from __future__ import annotations

import pytest
import torch
from chat_samples import CHATS, COMPLETIONS
from conftest import build_tiny_gpt2

from star_gate.backends import hf
from star_gate.backends.base import Backend, SamplingParams
from star_gate.backends.hf import TransformersBackend, native_bf16, pick_dtype


def manual_logprob(model, tokenizer, chat, completion) -> float:
    """log p(completion | chat) from one unpadded forward pass over prompt + completion."""
    prompt_text = tokenizer.apply_chat_template(chat, tokenize=False, add_generation_prompt=True)
    prompt = tokenizer(prompt_text, add_special_tokens=False)["input_ids"]
    target = tokenizer(completion, add_special_tokens=False)["input_ids"]
    ids = torch.tensor([prompt + target])
    with torch.no_grad():
        logp = torch.log_softmax(model(input_ids=ids).logits.float(), dim=-1)[0]
    positions = range(len(prompt) - 1, len(prompt) + len(target) - 1)
    return sum(logp[pos, tok].item() for pos, tok in zip(positions, target))


def test_backend_satisfies_protocol(tiny_backend):
    assert isinstance(tiny_backend, Backend)
    assert tiny_backend.name == "tiny"


def test_batched_logprobs_equal_one_at_a_time(tiny_backend):
    assert len({len(tiny_backend.encode_prompt(c)) for c in CHATS}) == len(
        CHATS
    )  # all lengths differ
    batched = tiny_backend.logprobs(CHATS, COMPLETIONS)
    single = [tiny_backend.logprobs([c], [x])[0] for c, x in zip(CHATS, COMPLETIONS)]
    assert batched == pytest.approx(single, abs=1e-4)


def test_logprobs_sum_only_completion_tokens(tiny_backend, tiny_model, tiny_tokenizer):
    scores = tiny_backend.logprobs(CHATS, COMPLETIONS)
    manual = [manual_logprob(tiny_model, tiny_tokenizer, c, x) for c, x in zip(CHATS, COMPLETIONS)]
    assert scores == pytest.approx(manual, abs=1e-4)
    assert all(s < 0 for s in scores)


def test_logprob_of_full_sequence_is_not_what_is_returned(tiny_backend, tiny_model, tiny_tokenizer):
    """Guard against summing prompt tokens too: the whole-sequence sum is far lower."""
    chat, completion = CHATS[0], COMPLETIONS[0]
    text = (
        tiny_tokenizer.apply_chat_template(chat, tokenize=False, add_generation_prompt=True)
        + completion
    )
    ids = torch.tensor([tiny_tokenizer(text, add_special_tokens=False)["input_ids"]])
    with torch.no_grad():
        logp = torch.log_softmax(tiny_model(input_ids=ids).logits, dim=-1)[0, :-1]
    whole = logp.gather(-1, ids[0, 1:, None]).sum().item()
    assert tiny_backend.logprobs([chat], [completion])[0] > whole + 10


def test_longer_completion_scores_lower(tiny_backend):
    chat = CHATS[1]
    short, longer = tiny_backend.logprobs(
        [chat, chat], ["Hello", "Hello there, how are you today?"]
    )
    assert longer < short


def test_empty_completion_scores_zero_in_a_batch(tiny_backend):
    scores = tiny_backend.logprobs(CHATS[:2], ["", COMPLETIONS[1]])
    assert scores[0] == 0.0
    assert scores[1] == pytest.approx(
        tiny_backend.logprobs(CHATS[1:2], COMPLETIONS[1:2])[0], abs=1e-4
    )


def test_all_empty_completions_score_zero(tiny_backend):
    assert tiny_backend.logprobs(CHATS[:2], ["", ""]) == [0.0, 0.0]


def test_greedy_with_several_samples_repeats_the_greedy_reply(tiny_backend):
    params = SamplingParams(n=3, temperature=0.0, max_new_tokens=6)
    replies = tiny_backend.generate(CHATS[:2], params)
    single = tiny_backend.generate(CHATS[:2], SamplingParams(temperature=0.0, max_new_tokens=6))
    assert replies == [[s[0]] * 3 for s in single]


def test_logprobs_needs_one_completion_per_chat(tiny_backend):
    with pytest.raises(ValueError, match="one completion per chat"):
        tiny_backend.logprobs(CHATS, COMPLETIONS[:2])


def test_batched_greedy_generate_equals_one_at_a_time(tiny_backend):
    params = SamplingParams(temperature=0.0, max_new_tokens=10)
    batched = tiny_backend.generate(CHATS, params)
    single = [tiny_backend.generate([c], params)[0] for c in CHATS]
    assert batched == single
    assert len({tuple(r) for r in single}) > 1  # the chats really get different replies


def test_generate_returns_n_samples_per_chat_in_input_order(tiny_backend):
    params = SamplingParams(n=3, temperature=1.0, top_p=1.0, max_new_tokens=6, seed=5)
    replies = tiny_backend.generate(CHATS, params)
    assert len(replies) == len(CHATS)
    assert all(len(r) == 3 and all(isinstance(t, str) for t in r) for r in replies)
    assert tiny_backend.generate(CHATS, params) == replies  # seeded
    assert tiny_backend.generate(CHATS, SamplingParams(**{**params.__dict__, "seed": 6})) != replies
    # order: the greedy reply of each chat sits at that chat's index, whatever the batch order
    greedy = SamplingParams(temperature=0.0, max_new_tokens=6)
    forward, backward = (
        tiny_backend.generate(CHATS, greedy),
        tiny_backend.generate(CHATS[::-1], greedy),
    )
    assert forward == backward[::-1]
    assert all(len(r) == 1 for r in forward)


def test_generation_stops_at_either_end_of_turn_token(tiny_model, tiny_tokenizer):
    """Both the tokenizer's eos and the model's generation eos stop a reply."""
    start_id = tiny_tokenizer.convert_tokens_to_ids("<|im_start|>")
    tiny_model.generation_config.eos_token_id = start_id
    backend = TransformersBackend(
        model="tiny",
        model_object=tiny_model,
        tokenizer=tiny_tokenizer,
        progress=False,
        device="cpu",
    )
    assert backend.stop_ids == sorted({tiny_tokenizer.eos_token_id, start_id})
    replies = backend.generate(
        CHATS, SamplingParams(n=2, temperature=1.5, top_p=1.0, max_new_tokens=20)
    )
    assert all("<|im_end|>" not in t and "<|im_start|>" not in t for r in replies for t in r)


def test_prompts_are_cut_from_the_left_and_counted(tiny_model, tiny_tokenizer):
    backend = TransformersBackend(
        model="tiny",
        model_object=tiny_model,
        tokenizer=tiny_tokenizer,
        progress=False,
        device="cpu",
        max_context=64,
    )
    long_chat = [{"role": "user", "content": "Where did you grow up? " * 40}]
    ids = backend.encode_prompt(long_chat, room=10)
    assert len(ids) == 54
    full = tiny_tokenizer(
        tiny_tokenizer.apply_chat_template(long_chat, tokenize=False, add_generation_prompt=True),
        add_special_tokens=False,
    )["input_ids"]
    assert ids == full[-54:]  # the end (with the assistant header) is kept
    assert backend.truncated_prompts == 1
    backend.encode_prompt(CHATS[1], room=10)
    assert backend.truncated_prompts == 1


def test_loads_by_path(tiny_dir):
    backend = TransformersBackend(str(tiny_dir), device="cpu", progress=False)
    assert backend.model.dtype == torch.float32
    assert backend.logprobs(CHATS[:1], COMPLETIONS[:1])[0] < 0


def test_a_model_loaded_for_sampling_loads_full_precision_only_to_score(tiny_dir):
    """A bf16 sampling copy is all a policy needs: its fp32 weights load again only to score, and
    then score exactly as a backend that kept them."""
    kept = TransformersBackend(str(tiny_dir), device="cpu", progress=False)
    lean = TransformersBackend(str(tiny_dir), device="cpu", progress=False, sample_dtype="bfloat16")
    assert lean._model is None
    assert next(lean.sampler.model.parameters()).dtype == torch.bfloat16
    params = SamplingParams(n=2, temperature=1.0, max_new_tokens=6, seed=3)
    sampled = lean.generate(CHATS[:2], params)
    assert lean._model is None  # sampling never loaded it
    assert lean.logprobs(CHATS, COMPLETIONS) == kept.logprobs(CHATS, COMPLETIONS)
    assert lean.model.dtype == torch.float32
    assert lean.generate(CHATS[:2], params) == sampled  # still sampled by the bf16 copy


def test_score_dtype_runs_the_layers_low_and_the_output_layer_at_full_precision(tiny_dir):
    """score_dtype: layers at bf16 (shared with the sampling copy), the output layer and the
    log-softmax at fp32; scores near the fp32 model's, the fp32 weights released but for the
    output layer."""
    exact = TransformersBackend(str(tiny_dir), device="cpu", progress=False)
    mixed = TransformersBackend(
        str(tiny_dir),
        device="cpu",
        progress=False,
        sample_dtype="bfloat16",
        score_dtype="bfloat16",
    )
    want = exact.logprobs(CHATS, COMPLETIONS)
    got = mixed.logprobs(CHATS, COMPLETIONS)
    assert mixed._model is None  # scoring loaded the full model only for its output layer
    scoring = mixed.runner.model
    assert scoring.get_input_embeddings().weight.dtype == torch.bfloat16
    assert scoring.get_output_embeddings().layer.weight.dtype == torch.float32
    # One bf16 copy serves both: the sampler's body is the scorer's, its own output layer bf16.
    assert scoring.get_input_embeddings() is mixed.sampler.model.get_input_embeddings()
    assert mixed.sampler.model.get_output_embeddings().weight.dtype == torch.bfloat16
    assert got != want
    assert got == pytest.approx(want, abs=0.01)  # about 1e-3 apart on the tiny model
    ids = torch.tensor([[1, 2, 3]])
    assert scoring(input_ids=ids).logits.dtype == torch.float32


def test_score_dtype_at_the_models_own_dtype_changes_nothing(tiny_dir):
    exact = TransformersBackend(str(tiny_dir), device="cpu", progress=False)
    same = TransformersBackend(str(tiny_dir), device="cpu", progress=False, score_dtype="float32")
    assert same.logprobs(CHATS, COMPLETIONS) == exact.logprobs(CHATS, COMPLETIONS)
    assert same.runner.model is same.model


@pytest.mark.parametrize(
    ("flags", "native"),
    [({"avx2", "fma"}, False), ({"avx512f", "avx512_bf16"}, True), ({"avx2", "amx_bf16"}, True)],
)
def test_native_bf16_on_a_cpu_follows_its_instruction_sets(monkeypatch, flags, native):
    monkeypatch.setattr(hf, "cpu_flags", lambda: flags)
    assert native_bf16("cpu") is native


def test_cpu_flags_reads_this_machine():
    flags = hf.cpu_flags()
    assert isinstance(flags, set)
    assert not flags or "sse2" in flags or "fpu" in flags  # an x86 Linux machine lists its basics


@pytest.mark.parametrize(
    ("flags", "dtype"), [(set(), torch.float32), ({"amx_bf16"}, torch.bfloat16)]
)
def test_auto_copies_are_bf16_only_where_the_cpu_computes_it_natively(
    tiny_dir, monkeypatch, flags, dtype
):
    """sample_dtype/score_dtype 'auto': emulated bf16 (an AVX2-only CPU) would be many times
    slower than fp32, so there the model samples and scores at its own dtype."""
    monkeypatch.setattr(hf, "cpu_flags", lambda: flags)
    backend = TransformersBackend(
        str(tiny_dir), device="cpu", progress=False, sample_dtype="auto", score_dtype="auto"
    )
    assert next(backend.sampler.model.parameters()).dtype == dtype
    assert backend.runner.model.get_input_embeddings().weight.dtype == dtype


def test_pick_dtype():
    assert pick_dtype("auto", "cpu") == torch.float32
    assert pick_dtype("auto", "cuda:0") == torch.bfloat16
    assert pick_dtype("float16", "cpu") == torch.float16


@pytest.fixture
def absolute_position_backend(tiny_tokenizer):
    """A tiny GPT-2: learned absolute positions, so a left-padded row is wrong without position ids."""
    model = build_tiny_gpt2(tiny_tokenizer)
    return TransformersBackend(
        "gpt2-tiny",
        model_object=model,
        tokenizer=tiny_tokenizer,
        progress=False,
        device="cpu",
        batch_size=3,
    )


def test_batching_is_exact_with_absolute_positions(absolute_position_backend):
    backend = absolute_position_backend
    batched = backend.logprobs(CHATS, COMPLETIONS)
    single = [backend.logprobs([c], [x])[0] for c, x in zip(CHATS, COMPLETIONS)]
    assert batched == pytest.approx(single, abs=1e-4)
    greedy = SamplingParams(temperature=0.0, max_new_tokens=8)
    assert backend.generate(CHATS, greedy) == [backend.generate([c], greedy)[0] for c in CHATS]
