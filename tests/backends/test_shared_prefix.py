"""The shared-prefix engine (backends/shared_prefix.py) behind TransformersBackend.generate and
token_logprobs: it must compute exactly what a plain, unpadded, one-chat-at-a-time model would.

Every reference here is independent of the engine: HF `model.generate` on one chat, or one plain
forward pass over prompt + completion.
"""

from __future__ import annotations

import pytest
import torch
from conftest import build_tiny_gpt2, build_tiny_model

from star_gate.backends import hf
from star_gate.backends import shared_prefix as sp
from star_gate.backends.base import SamplingParams
from star_gate.backends.hf import TransformersBackend
from star_gate.backends.shared_prefix import common_prefix_length
from star_gate.roles.prompts import QUESTIONER_FEWSHOT

# -- chats sharing a long opening (system prompt + few-shot examples, ~200 tokens) -----------------

OPENING = QUESTIONER_FEWSHOT.opening()
REQUESTS = [
    "What should I cook tonight?",
    "Recommend me a book.",
    "Where should I go on vacation this year? Somewhere warm, with good food and a beach nearby.",
    "Hi",
    "How should I start saving money?",
]
SHARED_CHATS = [[*OPENING, {"role": "user", "content": r}] for r in REQUESTS]
# a longer chat continuing the first: its prompt extends another prompt of the same call
SHARED_CHATS.append(
    [
        *SHARED_CHATS[0],
        {"role": "assistant", "content": "Do you eat meat?"},
        {"role": "user", "content": "No."},
    ]
)
COMPLETIONS = [
    "Try a lentil curry.",
    "Hello!",
    "Lisbon in late spring: warm days, grilled sardines and the beaches of Cascais close by.",
    "",
    "Put aside a tenth of each pay cheque.",
    "Then a vegetable stew.",
]


def make_backend(model, tokenizer, batch_size=16) -> TransformersBackend:
    return TransformersBackend(
        model="tiny",
        model_object=model,
        tokenizer=tokenizer,
        progress=False,
        device="cpu",
        batch_size=batch_size,
    )


@pytest.fixture
def sharp_model(tiny_tokenizer):
    """The tiny Llama of conftest with larger initial weights (initializer_range 0.3, not 0.02).

    With the default weights the ~200-token shared opening swamps everything after it: every chat
    gets the same greedy reply, and a row that read its neighbour's suffix or the wrong positions
    would go unnoticed. These weights make each reply and log-prob depend on the whole prompt."""
    return build_tiny_model(tiny_tokenizer, initializer_range=0.3)


@pytest.fixture
def gpt2_backend(tiny_tokenizer):
    """A tiny GPT-2: learned absolute positions, so a wrong position id changes every log-prob."""
    model = build_tiny_gpt2(
        tiny_tokenizer, initializer_range=0.2
    )  # as sharp_model: outputs depend on every position
    return make_backend(model, tiny_tokenizer, batch_size=3)


def record_replies(backend) -> list[list[int]]:
    """Spy on backend._reply: the new token ids of every reply, in the order they are decoded."""
    seen: list[list[int]] = []
    inner = backend._reply

    def spy(ids):
        seen.append(list(ids))
        return inner(ids)

    backend._reply = spy
    return seen


def reference_greedy(
    model, prompt: list[int], max_new_tokens: int, stop_ids: list[int]
) -> list[int]:
    """HF generate on one unpadded prompt; new ids up to and including the first stop id."""
    with torch.no_grad():
        out = model.generate(
            input_ids=torch.tensor([prompt]),
            attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
            max_new_tokens=max_new_tokens,
            do_sample=False,
            temperature=None,
            top_p=None,
            top_k=None,
            eos_token_id=stop_ids,
            pad_token_id=stop_ids[0],
        )
    return cut_at_stop(out[0, len(prompt) :].tolist(), stop_ids)


def cut_at_stop(ids: list[int], stop_ids) -> list[int]:
    for i, token in enumerate(ids):
        if token in stop_ids:
            return ids[: i + 1]
    return ids


def manual_token_logprobs(model, prompt: list[int], target: list[int]) -> list[float]:
    """log p(target[i] | prompt, target[:i]) from one unpadded forward pass."""
    if not target:
        return []
    ids = torch.tensor([prompt + target])
    with torch.no_grad():
        logp = torch.log_softmax(model(input_ids=ids).logits.float(), dim=-1)[0]
    return [logp[len(prompt) - 1 + i, tok].item() for i, tok in enumerate(target)]


# -- 1. common_prefix_length ---------------------------------------------------------------------


def test_common_prefix_length():
    head = list(range(100, 100 + sp.MIN_SHARED + 12))  # 20 shared tokens
    assert common_prefix_length([head + [1, 2], head + [3], head + [4, 5, 6]]) == len(head)
    # below MIN_SHARED: not worth a pass
    short = list(range(100, 100 + sp.MIN_SHARED - 1))
    assert common_prefix_length([short + [1, 2], short + [3, 4]]) == 0
    assert common_prefix_length([short + [1], short + [1]]) == 0  # identical, 1 short of MIN_SHARED
    # exactly MIN_SHARED shared tokens count
    exact = list(range(sp.MIN_SHARED))
    assert common_prefix_length([exact + [1], exact + [2]]) == sp.MIN_SHARED
    # identical rows: every row keeps its last token
    row = list(range(30))
    assert common_prefix_length([row, row, row]) == 29
    assert common_prefix_length([row]) == 29
    # one row a prefix of another: the shorter one keeps one token of its own
    assert common_prefix_length([row, row + [7, 8, 9]]) == 29
    assert common_prefix_length([row + [7, 8, 9], row[:20]]) == 19
    # differing first token, empty input
    assert common_prefix_length([[1] + row, [2] + row]) == 0
    assert common_prefix_length([]) == 0
    assert common_prefix_length([[5]]) == 0


# -- 2. greedy generation equals plain HF generate -------------------------------------------------


@pytest.mark.parametrize("batch_size", [16, 3])
def test_greedy_generate_equals_hf_generate_one_chat_at_a_time(
    sharp_model, tiny_tokenizer, batch_size
):
    backend = make_backend(sharp_model, tiny_tokenizer, batch_size=batch_size)
    # different lengths, duplicates (2 x chat 0, 2 x chat 3) and unsorted order, in one call
    chats = [SHARED_CHATS[i] for i in (2, 0, 5, 3, 0, 1, 3, 4)]
    prompts = [backend.encode_prompt(c) for c in chats]
    assert common_prefix_length(prompts) > 150  # the opening really is shared
    assert len({len(p) for p in prompts}) == 6
    calls = []
    inner_sample = backend.runner.sample
    backend.runner.sample = lambda *a, **k: calls.append(len(a[1])) or inner_sample(*a, **k)
    seen = record_replies(backend)
    params = SamplingParams(temperature=0.0, max_new_tokens=12)
    replies = backend.generate(chats, params)
    expected = [reference_greedy(sharp_model, p, 12, backend.stop_ids) for p in prompts]
    assert seen == expected  # token for token, in input order
    assert replies == [
        [tiny_tokenizer.decode(cut_at_stop(e, []), skip_special_tokens=True).strip()]
        for e in expected
    ]
    assert len({tuple(e) for e in expected}) > 3  # the chats really get different replies
    if batch_size < len(chats):
        assert len(calls) > 1  # several batches
    else:
        assert calls == [6]  # duplicates prefilled once


def test_greedy_generate_with_absolute_positions_equals_hf_generate(gpt2_backend):
    backend = gpt2_backend
    chats = [SHARED_CHATS[i] for i in (1, 2, 3, 2, 0)]
    prompts = [backend.encode_prompt(c) for c in chats]
    seen = record_replies(backend)
    backend.generate(chats, SamplingParams(temperature=0.0, max_new_tokens=8))
    assert seen == [reference_greedy(backend.model, p, 8, backend.stop_ids) for p in prompts]


def test_greedy_generate_without_a_shared_prefix_equals_hf_generate(sharp_model, tiny_tokenizer):
    """Chats that share fewer than MIN_SHARED tokens: no prefix pass, the same results."""
    from chat_samples import CHATS

    backend = make_backend(sharp_model, tiny_tokenizer, batch_size=4)
    chats = [*CHATS, CHATS[1]]
    prompts = [backend.encode_prompt(c) for c in chats]
    assert common_prefix_length(prompts) == 0
    seen = record_replies(backend)
    backend.generate(chats, SamplingParams(temperature=0.0, max_new_tokens=8))
    assert seen == [reference_greedy(sharp_model, p, 8, backend.stop_ids) for p in prompts]


def test_prefix_cache_hit_gives_the_same_replies(sharp_model, tiny_tokenizer):
    backend = make_backend(sharp_model, tiny_tokenizer, batch_size=4)
    params = SamplingParams(temperature=0.0, max_new_tokens=8)
    first = backend.generate(SHARED_CHATS[:4], params)  # fills the cache
    assert len(backend.runner._prefixes) == 1
    backend.generate(SHARED_CHATS[2:], params)  # another subset (maybe another prefix)
    assert backend.generate(SHARED_CHATS[:4], params) == first  # read from the cache
    for _ in range(sp.KEPT_PREFIXES + 2):  # distinct single chats: distinct prefixes, LRU evicts
        backend.generate([[{"role": "user", "content": f"Question number {_} for you."}]], params)
    assert len(backend.runner._prefixes) <= sp.KEPT_PREFIXES
    assert backend.generate(SHARED_CHATS[:4], params) == first


# -- 3. scoring equals an unpadded forward per chat -----------------------------------------------


def check_scores(backend, chats, completions):
    prompts = [backend.encode_prompt(c) for c in chats]
    targets = [hf.text_ids(backend.tokenizer, x) for x in completions]
    scored = backend.token_logprobs(chats, completions)
    assert [len(s) for s in scored] == [len(t) for t in targets]
    for got, prompt, target in zip(scored, prompts, targets):
        assert got == pytest.approx(manual_token_logprobs(backend.model, prompt, target), abs=1e-4)


@pytest.mark.parametrize("logit_tokens", [4096, 12, 1])
def test_token_logprobs_equal_unpadded_forward(
    sharp_model, tiny_tokenizer, monkeypatch, logit_tokens
):
    monkeypatch.setattr(hf, "SCORE_LOGIT_TOKENS", logit_tokens)
    backend = make_backend(sharp_model, tiny_tokenizer, batch_size=16)
    calls = []
    inner = backend.runner.score
    backend.runner.score = lambda *a: calls.append(len(a[1])) or inner(*a)
    check_scores(backend, SHARED_CHATS, COMPLETIONS)
    if logit_tokens < 4096:
        assert len(calls) > 1  # batches were split
    else:
        assert calls == [len(SHARED_CHATS)]


def test_token_logprobs_without_a_shared_prefix(sharp_model, tiny_tokenizer):
    from chat_samples import CHATS
    from chat_samples import COMPLETIONS as SAMPLE_COMPLETIONS

    backend = make_backend(sharp_model, tiny_tokenizer, batch_size=3)
    assert common_prefix_length([backend.encode_prompt(c) for c in CHATS]) == 0
    check_scores(backend, CHATS, SAMPLE_COMPLETIONS)


def test_token_logprobs_same_chat_many_completions(sharp_model, tiny_tokenizer):
    """Identical prompts: the shared prefix is all of the prompt but its last token."""
    backend = make_backend(sharp_model, tiny_tokenizer, batch_size=4)
    chat = SHARED_CHATS[2]
    check_scores(backend, [chat] * len(COMPLETIONS), COMPLETIONS)


@pytest.mark.parametrize("logit_tokens", [4096, 12])
def test_token_logprobs_mixing_shared_and_unique_prompts(
    sharp_model, tiny_tokenizer, monkeypatch, logit_tokens
):
    """A judge's 'A' and 'B' after the same prompt, and golds after prompts of their own, in one call:
    prompts that repeat run once per batch, and every row still scores as it would alone."""
    monkeypatch.setattr(hf, "SCORE_LOGIT_TOKENS", logit_tokens)
    backend = make_backend(sharp_model, tiny_tokenizer, batch_size=5)
    chats = [SHARED_CHATS[0], SHARED_CHATS[1], SHARED_CHATS[0], SHARED_CHATS[3], SHARED_CHATS[1]]
    completions = ["A", COMPLETIONS[1], "B", COMPLETIONS[3], COMPLETIONS[0]]
    check_scores(backend, chats, completions)


@pytest.mark.parametrize("logit_tokens", [4096, 12])
def test_token_logprobs_with_absolute_positions(gpt2_backend, monkeypatch, logit_tokens):
    monkeypatch.setattr(hf, "SCORE_LOGIT_TOKENS", logit_tokens)
    check_scores(gpt2_backend, SHARED_CHATS, COMPLETIONS)
    check_scores(gpt2_backend, [SHARED_CHATS[0]] * 3, COMPLETIONS[:3])


# -- 4. sampling reproducibility ------------------------------------------------------------------

SAMPLE = SamplingParams(n=3, temperature=1.0, top_p=1.0, max_new_tokens=6, seed=11)


def test_same_seed_same_samples_even_after_the_cache_filled(sharp_model, tiny_tokenizer):
    backend = make_backend(sharp_model, tiny_tokenizer, batch_size=4)
    chats = SHARED_CHATS[:4]
    first = backend.generate(chats, SAMPLE)
    backend.generate(SHARED_CHATS[3:], SamplingParams(n=2, temperature=1.0, seed=3))  # another call
    assert backend.generate(chats, SAMPLE) == first  # prefix now cached
    backend.runner._prefixes.clear()
    assert backend.generate(chats, SAMPLE) == first  # computed afresh
    other = backend.generate(chats, SamplingParams(**{**SAMPLE.__dict__, "seed": 12}))
    assert other != first
    flat_first, flat_other = [t for r in first for t in r], [t for r in other for t in r]
    assert sum(a != b for a, b in zip(flat_first, flat_other)) > len(flat_first) // 2


def test_identical_chats_get_different_samples(sharp_model, tiny_tokenizer):
    backend = make_backend(sharp_model, tiny_tokenizer, batch_size=16)
    chats = [SHARED_CHATS[1]] * 4
    replies = backend.generate(
        chats, SamplingParams(n=1, temperature=1.0, top_p=1.0, max_new_tokens=6, seed=0)
    )
    assert len({r[0] for r in replies}) > 1
    # duplicates with n > 1: each chat takes its own share, not a copy of another's
    chats = [SHARED_CHATS[0], SHARED_CHATS[3], SHARED_CHATS[0]]
    replies = backend.generate(chats, SAMPLE)
    assert [len(r) for r in replies] == [3, 3, 3]
    assert replies[0] != replies[2]
    assert len(set(replies[0])) > 1


def test_sampled_replies_keep_input_order_with_several_samples(sharp_model, tiny_tokenizer):
    """top_p tiny makes sampling pick the most likely token: each chat's n samples must all be that
    chat's greedy reply, whatever the batch order and batch splits."""
    backend = make_backend(sharp_model, tiny_tokenizer, batch_size=4)
    chats = [SHARED_CHATS[i] for i in (2, 0, 5, 3, 0, 1, 4)]
    near_greedy = backend.generate(
        chats, SamplingParams(n=3, temperature=1.0, top_p=1e-6, max_new_tokens=8)
    )
    greedy = [
        backend.generate([c], SamplingParams(temperature=0.0, max_new_tokens=8))[0][0]
        for c in chats
    ]
    assert near_greedy == [[g] * 3 for g in greedy]
    assert len(set(greedy)) > 3


# -- 5. nucleus_sample ----------------------------------------------------------------------------


def draws(probs: torch.Tensor, top_p: float, count: int, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.stack([sp.nucleus_sample(probs, top_p, generator) for _ in range(count)])


def test_nucleus_sample_stays_in_the_nucleus():
    probs = torch.tensor([[0.5, 0.3, 0.15, 0.05]])
    picked = draws(probs, 0.8, 400)[:, 0]
    assert set(picked.tolist()) == {0, 1}
    share = (picked == 0).float().mean().item()
    assert 0.5 < share < 0.75  # renormalised: 0.5 / 0.8 = 0.625
    # permuted vocabulary: the same tokens by probability, not by index
    perm = torch.tensor([2, 0, 3, 1])
    picked = draws(probs[:, perm], 0.8, 200)[:, 0]
    assert set(picked.tolist()) == {1, 3}
    # top_p 1 allows every token
    assert set(draws(probs, 1.0, 400)[:, 0].tolist()) == {0, 1, 2, 3}


def test_nucleus_sample_keeps_the_first_token_when_top_p_is_tiny():
    torch.manual_seed(0)
    probs = torch.softmax(torch.randn(5, 700) * 3, dim=-1)
    for _ in range(20):
        assert torch.equal(
            sp.nucleus_sample(probs, 1e-9, torch.Generator().manual_seed(_)), probs.argmax(-1)
        )


def test_nucleus_sample_full_sort_fallback(monkeypatch):
    monkeypatch.setattr(sp, "NUCLEUS_CANDIDATES", 2)
    wide = torch.tensor([0.2, 0.18, 0.16, 0.14, 0.12, 0.1, 0.06, 0.04])  # top-2 mass 0.38 < 0.7
    perm = torch.tensor([5, 2, 7, 0, 3, 6, 1, 4])
    wide = wide[perm]  # token perm.argsort()[k] has the k-th largest probability
    nucleus = set(
        perm.argsort()[:5].tolist()
    )  # mass before the 5th is 0.68 < 0.7, before the 6th 0.80
    peaked = torch.tensor([0.01, 0.9, 0.02, 0.03, 0.01, 0.01, 0.01, 0.01])  # nucleus {1}
    picked = draws(torch.stack([wide, peaked]), 0.7, 1500)
    assert set(picked[:, 0].tolist()) == nucleus
    assert set(picked[:, 1].tolist()) == {1}
    top = perm.argsort()[0].item()
    assert 0.2 < (picked[:, 0] == top).float().mean().item() < 0.3  # 0.2 / 0.8 = 0.25
    # a flat distribution: any 5 of 10 tokens, never more
    flat = torch.full((1, 10), 0.1)
    picked = draws(flat, 0.45, 300)[:, 0]
    assert len(set(picked.tolist())) <= 5
    assert all(0 <= t < 10 for t in picked.tolist())


def test_nucleus_sample_sorts_only_the_wide_rows(monkeypatch):
    monkeypatch.setattr(sp, "NUCLEUS_CANDIDATES", 2)
    sorted_shapes = []
    real_sort = torch.Tensor.sort

    def recording_sort(self, *args, **kwargs):
        sorted_shapes.append(tuple(self.shape))
        return real_sort(self, *args, **kwargs)

    monkeypatch.setattr(torch.Tensor, "sort", recording_sort)
    peaked = torch.tensor([0.01, 0.9, 0.02, 0.03, 0.01, 0.01, 0.01, 0.01])
    wide = torch.full((8,), 0.125)
    probs = torch.stack([peaked, wide, peaked, peaked])
    picked = draws(probs, 0.7, 50)
    assert sorted_shapes == [(1, 8)] * 50  # the wide row alone, never the whole batch
    assert picked[:, [0, 2, 3]].eq(1).all()
    assert len(set(picked[:, 1].tolist())) > 2  # the wide row draws from its wide nucleus


# -- 6. compaction of stopped rows ---------------------------------------------------------------


def stop_token_for(runner_outputs: list[list[int]]) -> int:
    """A token some rows emit early and at least one row never emits."""
    for step in range(1, 4):
        for row in runner_outputs:
            token = row[step]
            if any(token not in other for other in runner_outputs):
                return token
    raise AssertionError("no usable stop token")


@pytest.mark.parametrize("sampled", [False, True])
def test_compaction_changes_nothing_for_greedy(sharp_model, tiny_tokenizer, monkeypatch, sampled):
    backend = make_backend(sharp_model, tiny_tokenizer)
    runner = backend.runner
    prompts = [backend.encode_prompt(c) for c in SHARED_CHATS]
    shared = common_prefix_length(prompts)
    prefix, suffixes = prompts[0][:shared], [p[shared:] for p in prompts]
    samples = [1, 2, 1, 3, 1, 2]
    # with top_p tiny, sampling is greedy too (and goes through nucleus_sample)
    sampling = (1.0, 1e-9) if sampled else None
    never = [-1]
    plain = runner.sample(
        prefix, suffixes, samples, 14, never, sampling, torch.Generator().manual_seed(0)
    )
    stop = stop_token_for([g[0] for g in plain])
    expected = [[cut_at_stop(ids, [stop]) for ids in group] for group in plain]
    lengths = [len(ids) for group in expected for ids in group]
    assert min(lengths) < 5 and max(lengths) == 14  # some rows stop early, others run on

    selects = []
    inner_select = sp.KVBuffer.select
    monkeypatch.setattr(
        sp.KVBuffer,
        "select",
        lambda self, rows: selects.append(len(rows)) or inner_select(self, rows),
    )
    results = {}
    for name, compact_at in (("never", 0), ("default", 4), ("always", 10**9)):
        monkeypatch.setattr(sp, "COMPACT_AT", compact_at)
        selects.clear()
        results[name] = runner.sample(
            prefix, suffixes, samples, 14, [stop], sampling, torch.Generator().manual_seed(0)
        )
        if name == "never":
            assert len(selects) == 1  # the copy to samples only
        if name == "always":
            assert len(selects) >= 2 and selects[1] < selects[0]  # rows really were dropped
    assert results["never"] == expected
    assert results["default"] == expected
    assert results["always"] == expected
    # and against HF generate for each prompt
    for prompt, group in zip(prompts, expected):
        assert group[0] == reference_greedy(sharp_model, prompt, 14, [stop])


# -- 7. generated token counting -----------------------------------------------------------------


def test_generated_tokens_count_the_stop_token_and_nothing_after(sharp_model, tiny_tokenizer):
    backend = make_backend(sharp_model, tiny_tokenizer, batch_size=3)
    chats = SHARED_CHATS
    prompts = [backend.encode_prompt(c) for c in chats]
    runs = [reference_greedy(sharp_model, p, 10, [-1]) for p in prompts]  # no stop: 10 each
    stop = stop_token_for(runs)
    backend.stop_ids = [stop]
    expected = [cut_at_stop(r, [stop]) for r in runs]
    assert any(len(e) < 10 and e[-1] == stop for e in expected) and any(
        len(e) == 10 for e in expected
    )
    backend.generated_tokens = 0
    seen = record_replies(backend)
    replies = backend.generate(chats, SamplingParams(temperature=0.0, max_new_tokens=10))
    assert seen == expected
    assert backend.generated_tokens == sum(len(e) for e in expected)
    # the stop token is counted but not shown
    for reply, ids in zip(replies, expected):
        shown = ids[:-1] if ids[-1] == stop else ids
        assert reply == [tiny_tokenizer.decode(shown, skip_special_tokens=True).strip()]
    # greedy with n > 1 decodes once per chat and counts once
    backend.generated_tokens = 0
    backend.generate(chats[:2], SamplingParams(n=4, temperature=0.0, max_new_tokens=10))
    assert backend.generated_tokens == len(expected[0]) + len(expected[1])
    # sampling: every sample counts up to and including its stop token
    backend.generated_tokens = 0
    seen.clear()
    backend.generate(
        chats[:2], SamplingParams(n=3, temperature=1.0, top_p=1.0, max_new_tokens=10, seed=1)
    )
    assert len(seen) == 6
    assert all(stop not in ids[:-1] for ids in seen)
    assert backend.generated_tokens == sum(len(ids) for ids in seen)
