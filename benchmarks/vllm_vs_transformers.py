"""vLLM against transformers on one GPU: generation throughput and log-prob agreement.

Both backends load the same model, in the same dtype, on one GPU (vLLM takes
--gpu-memory-utilization of it; transformers the rest). Generation: the questioner's first turn
of the simulate stage (the few-shot questioner prompt on the tasks of the first --pairs pairs of
split A) with --n samples per prompt and the same sampling settings and seed for both; rounds
alternate which backend goes first, so drift on the machine hits both. Each backend counts its
new tokens up to and including each reply's stop token, and tokens/s is that count over the
call's wall time. Agreement: per-token log-probs of the gold answers under the scoring chats
(each pair's negative and positive control), from both backends: the largest and the median
absolute difference per token. vLLM then scores the same texts in reverse order: prefix caching
must not make a log-prob depend on what was scored before it.

    python benchmarks/vllm_vs_transformers.py --model bundled [--pairs 32] [--n 4] [--rounds 3]
    python benchmarks/vllm_vs_transformers.py --dry-run   # the prompts only; no model is loaded

Not yet run on a GPU.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Sequence

from star_gate.backends.base import Chat, SamplingParams
from star_gate.data.loaders import load_dataset
from star_gate.data.records import Conversation, Pair
from star_gate.roles import views
from star_gate.roles.prompts import get_template


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="bundled", help="'bundled', a local folder or a hub id")
    parser.add_argument("--data", default="bundled", help="dataset folder or 'bundled'")
    parser.add_argument("--split", default="A")
    parser.add_argument(
        "--pairs", type=int, default=32, help="(task, persona) pairs: prompts per round"
    )
    parser.add_argument("--n", type=int, default=4, help="samples per prompt")
    parser.add_argument("--max-new-tokens", type=int, default=48)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("--max-context", type=int, default=2048)
    parser.add_argument(
        "--batch-size", type=int, default=16, help="transformers rows per forward pass"
    )
    parser.add_argument(
        "--gpu-memory-utilization", type=float, default=0.5, help="vLLM's share of the GPU"
    )
    parser.add_argument(
        "--no-prefix-caching", action="store_true", help="turn vLLM's prefix caching off"
    )
    parser.add_argument(
        "--dry-run", action="store_true", help="build and show the prompts, load no model"
    )
    return parser.parse_args(argv)


def generation_chats(pairs: Sequence[Pair]) -> list[Chat]:
    """What the questioner sees before its first question, one chat per pair."""
    template = get_template("questioner_fewshot")
    return [
        views.questioner_chat(
            template, p.task.text, Conversation(p.task.task_id, p.persona.persona_id, 0, 1)
        )
        for p in pairs
    ]


def scoring_texts(pairs: Sequence[Pair]) -> tuple[list[Chat], list[str]]:
    """The scoring chats of each pair's negative and positive control, with its gold answer."""
    chats = [views.negative_control_chat(p.task.text) for p in pairs]
    chats += [views.positive_control_chat(p.task.text, p.persona) for p in pairs]
    return chats, [p.gold.text for p in pairs] * 2


def timed_generate(backend, chats: list[Chat], params: SamplingParams) -> tuple[int, float]:
    """New tokens a backend generates for `chats`, and the seconds it took."""
    before, started = backend.generated_tokens, time.perf_counter()
    backend.generate(chats, params)
    return backend.generated_tokens - before, time.perf_counter() - started


def logprob_differences(first: list[list[float]], second: list[list[float]]) -> dict[str, float]:
    """Largest and median absolute per-token difference between two backends' log-probs."""
    if [len(a) for a in first] != [len(b) for b in second]:
        raise ValueError("the backends tokenized the texts differently")
    gaps = [abs(a - b) for row_a, row_b in zip(first, second) for a, b in zip(row_a, row_b)]
    if not gaps:
        raise ValueError("no tokens to compare")
    return {"tokens": len(gaps), "max": max(gaps), "median": statistics.median(gaps)}


def compare_logprobs(reference, other, chats: list[Chat], texts: list[str]) -> dict[str, float]:
    """Per-token agreement of two backends' log-probs of `texts` after `chats`."""
    return logprob_differences(
        reference.token_logprobs(chats, texts), other.token_logprobs(chats, texts)
    )


def order_effect(backend, chats: list[Chat], texts: list[str]) -> float:
    """Largest per-token change when the same texts are scored in reverse order."""
    forward = backend.token_logprobs(chats, texts)
    backward = backend.token_logprobs(chats[::-1], texts[::-1])[::-1]
    return logprob_differences(forward, backward)["max"]


def load_backends(args: argparse.Namespace):
    from star_gate.backends.hf import TransformersBackend
    from star_gate.backends.vllm_backend import VLLMBackend

    # vLLM first: it sizes its KV cache from the memory it finds free when it starts.
    fast = VLLMBackend(
        args.model,
        max_context=args.max_context,
        dtype=args.dtype,
        gpu_memory_utilization=args.gpu_memory_utilization,
        progress=False,
        prefix_caching=not args.no_prefix_caching,
    )
    reference = TransformersBackend(
        args.model,
        device="cuda",
        dtype=args.dtype,
        batch_size=args.batch_size,
        max_context=args.max_context,
        progress=False,
    )
    return reference, fast


def throughput(reference, fast, chats: list[Chat], args: argparse.Namespace) -> None:
    """Alternating rounds of the same generation on both backends; tokens/s and their ratio."""
    warmup = SamplingParams(n=1, max_new_tokens=8)
    for backend in (reference, fast):  # kernels, CUDA graphs and caches are ready before timing
        backend.generate(chats[:2], warmup)
    rates: dict[str, list[float]] = {"transformers": [], "vllm": []}
    for round_index in range(args.rounds):
        params = SamplingParams(
            n=args.n,
            temperature=0.9,
            top_p=0.9,
            max_new_tokens=args.max_new_tokens,
            seed=round_index,
        )
        order = [("transformers", reference), ("vllm", fast)]
        line = []
        for name, backend in order if round_index % 2 == 0 else order[::-1]:
            tokens, seconds = timed_generate(backend, chats, params)
            rates[name].append(tokens / seconds)
            line.append(f"{name} {tokens} tokens in {seconds:.1f}s = {rates[name][-1]:.0f} tok/s")
        print(f"round {round_index}: " + " | ".join(line))
    slow, quick = statistics.fmean(rates["transformers"]), statistics.fmean(rates["vllm"])
    ratio = quick / slow
    print(f"tok/s: transformers {slow:.0f}, vllm {quick:.0f}; ratio vllm/transformers {ratio:.1f}")


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    pairs = load_dataset(args.data).pairs(args.split)[: args.pairs]
    chats = generation_chats(pairs)
    score_chats, golds = scoring_texts(pairs)
    print(
        f"model={args.model} dtype={args.dtype} pairs={len(pairs)} n={args.n} "
        f"max_new_tokens={args.max_new_tokens} rounds={args.rounds} scored texts={len(golds)}"
    )
    if args.dry_run:
        print(f"first generation prompt: {chats[0]}")
        print(f"first scored text: {golds[0]!r} after {score_chats[0]}")
        return
    reference, fast = load_backends(args)
    throughput(reference, fast, chats, args)
    agreement = compare_logprobs(reference, fast, score_chats, golds)
    print(
        f"per-token log-prob |transformers - vllm| over {agreement['tokens']} tokens: "
        f"max {agreement['max']:.4f}, median {agreement['median']:.4f} nats"
    )
    change = order_effect(fast, score_chats, golds)
    print(f"vllm, the same texts in reverse order: largest per-token change {change:.2e} nats")


if __name__ == "__main__":
    main()
