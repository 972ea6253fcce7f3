"""The OpenAI-compatible backend against a real server: llama-cpp-python serving the bundled GGUF
on loopback, started and stopped here (`make test` installs llama-cpp-python[server]).

Covers: sampling (the server ignores `n`), log-probs checked token by token against the
transformers backend on the same text, llama.cpp's misaligned echo refused by the probe, caching
(the second run makes no call), retries across a server restart in the middle of a stage, and a
whole run whose roleplayer and judge are served over HTTP while the questioner is local.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import openai
import pytest
import torch

from star_gate.backends.base import SamplingParams
from star_gate.backends.models import bundled_gguf
from star_gate.backends.openai_compat import OpenAIBackend, RetryPolicy, ScoringUnavailable

# Slow like the other tests on the bundled model; `make test` runs them all. Never skipped when
# llama-cpp-python is missing: the server fixture fails, so CI cannot pass without them.
pytestmark = pytest.mark.slow

# The HTTP library the installed openai client talks through (httpx2 in newer releases, else httpx).
httpx = importlib.import_module("httpx2" if hasattr(openai._base_client, "httpx2") else "httpx")

# Chats and completions shaped like the pipeline's: a persona's question, a gold answer, a verdict.
CHATS = [
    [{"role": "user", "content": "What is the capital of France?"}],
    [
        {
            "role": "system",
            "content": "You are a helpful assistant. Tailor your answer to the user.",
        },
        {"role": "user", "content": "Recommend me a book."},
        {"role": "assistant", "content": "Happy to help! What topics do you enjoy most?"},
        {"role": "user", "content": "I like history and true stories about ordinary people."},
    ],
    [
        {
            "role": "user",
            "content": "Which answer suits a retired teacher who loves fiddle music? Reply A or B.",
        }
    ],
]
COMPLETIONS = [
    "The capital of France is Paris.",
    "Try 'The Warmth of Other Suns' by Isabel Wilkerson, a history told through three lives.",
    "A",
]
# llama.cpp multiplies the Q4_1 weights with 8-bit quantized activations, transformers with the same
# weights de-quantized to fp32. Measured on 292 completion tokens (these texts and bundled gold
# answers): median gap 0.05 nats, 99th percentile 0.41, largest 0.45; misaligned values are off by
# several nats.
PER_TOKEN_TOLERANCE = 0.6


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class LlamaServer:
    """`python -m llama_cpp.server` on a fixed loopback port; stop() and start() again at will."""

    def __init__(self, model: Path, port: int, log: Path):
        self.model, self.port, self.log = model, port, log
        self.base_url = f"http://127.0.0.1:{port}/v1"
        self.process: subprocess.Popen | None = None

    def start(self, timeout: float = 180.0) -> None:
        command = [
            sys.executable,
            "-m",
            "llama_cpp.server",
            "--model",
            str(self.model),
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--n_ctx",
            "2048",
            "--logits_all",
            "true",  # echo log-probs need every position's logits
            "--n_threads",
            "1",
            "--n_threads_batch",
            "2",
        ]
        with self.log.open("ab") as out:
            self.process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                pytest.fail(
                    f"llama server exited with {self.process.returncode}:\n{self._log_tail()}"
                )
            try:
                with urllib.request.urlopen(f"{self.base_url}/models", timeout=2) as answer:
                    if answer.status == 200:
                        return
            except OSError:
                time.sleep(0.3)
        self.stop()
        pytest.fail(f"llama server did not answer within {timeout:.0f} s:\n{self._log_tail()}")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()  # a hard stop, as a crash or an OOM kill would be
            self.process.wait(timeout=30)
        self.process = None

    def _log_tail(self) -> str:
        return self.log.read_text(errors="replace")[-3000:]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    if importlib.util.find_spec("llama_cpp") is None:
        pytest.fail(
            "llama-cpp-python is not installed: `make test` installs it (extra server-tests)"
        )
    running = LlamaServer(
        bundled_gguf(), free_port(), tmp_path_factory.mktemp("llama") / "server.log"
    )
    running.start()
    yield running
    running.stop()


@pytest.fixture
def make_backend(server, tmp_path):
    """make_backend(**kwargs) -> an OpenAIBackend on the server, caching in this test's folder."""
    made = []

    def make(**kwargs) -> OpenAIBackend:
        settings = {
            "base_url": server.base_url,
            "chat_template": "bundled",
            "progress": False,
            "cache_path": tmp_path / "api_cache.sqlite",
            "max_concurrency": 2,
            **kwargs,
        }
        backend = OpenAIBackend("bundled", **settings)
        made.append(backend)
        return backend

    yield make
    for backend in made:
        backend.close()


@pytest.fixture(scope="module")
def reference():
    """The bundled model in transformers: the same GGUF weights, de-quantized."""
    from star_gate.backends.hf import TransformersBackend

    return TransformersBackend("bundled", device="cpu", progress=False)


def reference_token_logprobs(reference, prompt: str, completion: str) -> list[tuple[str, float]]:
    """(token text, log p) of each completion token after the prompt, one unpadded forward pass."""
    tokenizer, model = reference.tokenizer, reference.model
    prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    target = tokenizer(completion, add_special_tokens=False)["input_ids"]
    with torch.inference_mode():
        logp = torch.log_softmax(
            model(input_ids=torch.tensor([prompt_ids + target])).logits.float(), -1
        )[0]
    return [
        (tokenizer.decode([token]), logp[len(prompt_ids) - 1 + i, token].item())
        for i, token in enumerate(target)
    ]


# -- generation ---------------------------------------------------------------------------------


def test_n_samples_come_from_repeated_requests(make_backend):
    backend = make_backend()
    replies = backend.generate(
        CHATS[:2], SamplingParams(n=3, temperature=1.0, top_p=1.0, max_new_tokens=12, seed=1)
    )
    assert [len(r) for r in replies] == [3, 3]
    assert all(len(set(r)) > 1 for r in replies)  # the server ignores n; distinct seeds differ
    counts = backend.api_counts()
    assert (
        counts["api_calls"] == 6
        and counts["api_completion_tokens"] > 0
        and counts["api_prompt_tokens"] > 0
    )
    greedy = backend.generate(CHATS[:1], SamplingParams(n=2, temperature=0.0, max_new_tokens=12))
    assert greedy[0][0] == greedy[0][1] and greedy[0][0]


# -- log-probs ----------------------------------------------------------------------------------


def test_echo_log_probs_match_transformers_token_by_token(make_backend, reference):
    backend = make_backend(logprobs="echo")
    assert backend.scoring_method() == "echo"  # the probe passes: the chat template starts with BOS
    gaps = []
    for chat, completion in zip(CHATS, COMPLETIONS):
        prompt = backend.render(chat)
        served = backend.token_logprobs(prompt, completion, "echo")
        expected = reference_token_logprobs(reference, prompt, completion)
        assert len(served) == len(expected)
        gaps += [abs(s - e) for s, (_, e) in zip(served, expected)]
        assert sum(served) == pytest.approx(
            sum(v for _, v in expected), abs=0.5 + 0.1 * len(expected)
        )
    print(
        f"largest per-token |llama.cpp - transformers| over {len(gaps)} tokens: "
        f"{max(gaps):.4f} nats"
    )
    assert max(gaps) < PER_TOKEN_TOLERANCE
    verdict = backend.logprobs(
        CHATS[2:], COMPLETIONS[2:]
    )  # the public method, as the judge calls it
    assert verdict == pytest.approx(
        reference.logprobs(CHATS[2:], COMPLETIONS[2:]), abs=PER_TOKEN_TOLERANCE
    )


def test_without_a_leading_bos_the_echo_is_misaligned_and_refused(make_backend, reference):
    """llama-cpp-python reports at position i the distribution after token i evaluated at token i
    (the trial's ' capital of France is Paris' case) when the prompt does not start with BOS."""
    backend = make_backend(logprobs="echo")
    prompt, completion = "The", " capital of France is Paris"
    served = backend.token_logprobs(prompt, completion, "echo")
    aligned = reference_token_logprobs(reference, prompt, completion)
    assert abs(served[0] - aligned[0][1]) > 1.0  # ' capital': not log p(' capital' | 'The')
    ids = reference.tokenizer(prompt + completion, add_special_tokens=False)["input_ids"]
    with torch.inference_mode():
        logp = torch.log_softmax(reference.model(input_ids=torch.tensor([ids])).logits.float(), -1)[
            0
        ]
    shifted = [
        logp[i, ids[i]].item() for i in range(1, len(ids))
    ]  # the next token's row, this token
    assert served == pytest.approx(shifted, abs=PER_TOKEN_TOLERANCE)
    # A chat template without BOS in front gets the same treatment, and the probe refuses it.
    backend.render = lambda chat: OpenAIBackend.render(backend, chat).removeprefix("<|im_start|>")
    with pytest.raises(ScoringUnavailable, match="misaligned"):
        backend.scoring_method()


# -- caching and retries -------------------------------------------------------------------------


def test_a_second_run_makes_no_http_calls(make_backend):
    sent = []
    hooks = {"request": [lambda request: sent.append(request.url.path)]}
    params = SamplingParams(n=2, temperature=0.8, max_new_tokens=8, seed=5)
    first = make_backend(http_client=httpx.Client(event_hooks=hooks))
    replies, scores = first.generate(CHATS, params), first.logprobs(CHATS[2:], COMPLETIONS[2:])
    assert len(sent) == 6 + 1 + 1  # samples, the probe, a score
    first.close()
    sent.clear()
    second = make_backend(http_client=httpx.Client(event_hooks=hooks))
    assert second.generate(CHATS, params) == replies
    assert second.logprobs(CHATS[2:], COMPLETIONS[2:]) == scores
    assert sent == [] and second.api_counts()["api_calls"] == 0
    assert second.api_counts()["api_cache_hits"] == 6 + 1 + 1


def restart_after(
    server: LlamaServer, backend: OpenAIBackend, calls: int, downtime: float
) -> threading.Thread:
    """Kill the server once the backend has sent `calls` requests; restart it after `downtime`."""

    def outage():
        while backend.api_counts()["api_calls"] < calls:
            time.sleep(0.05)
        server.stop()
        time.sleep(downtime)
        server.start()

    thread = threading.Thread(target=outage, daemon=True)
    thread.start()
    return thread


def test_a_stage_survives_the_server_going_down_and_coming_back(server, make_backend):
    backend = make_backend(max_concurrency=1, retry=RetryPolicy(max_retries=8, base_delay=0.5))
    outage = restart_after(server, backend, calls=2, downtime=2.0)
    chats = [
        [{"role": "user", "content": f"Name a fruit that starts with the letter {c}."}]
        for c in "ABCDEFGH"
    ]
    replies = backend.generate(chats, SamplingParams(temperature=0.0, max_new_tokens=6))
    outage.join(timeout=120)
    assert all(len(r) == 1 and r[0] for r in replies)
    assert backend.api_counts()["api_retries"] >= 1


# -- a whole run ----------------------------------------------------------------------------------


def mixed_config(server, tiny_dir, data: Path, run_dir: Path, judge_method: str = "generate"):
    from star_gate.config import RunConfig

    served = {
        "backend": "openai",
        "model": "bundled",
        "base_url": server.base_url,
        "chat_template": "bundled",
    }
    return RunConfig.model_validate(
        {
            "run_dir": str(run_dir),
            "iterations": 1,
            "data": {"path": str(data)},
            "roles": {
                "questioner": {"model": str(tiny_dir), "device": "cpu", "max_new_tokens": 6},
                "roleplayer": {**served, "mode": "persona", "max_new_tokens": 12, "max_retries": 8},
                "judge": {**served, "max_new_tokens": 2},
            },
            "simulate": {"conversations_per_pair": 2, "max_turns": 2},
            "regularize": {"max_new_tokens": 6},
            "train": {"batch_size": 4, "learning_rate": 1e-3, "validation_fraction": 0.0},
            # generate by default: llama-cpp-python's echo log-probs cost a sort of the vocabulary
            # per token, several seconds per judgement on 2 cores
            "evaluate": {
                "conversations_per_pair": 1,
                "answer_max_new_tokens": 6,
                "judge_method": judge_method,
            },
        }
    )


def api_work(stages: dict, prefix: str, name: str = "api_calls") -> int:
    """A count summed over a stage and its chunks (the work lands on the chunk that did it)."""
    return sum(entry.get(name, 0) for key, entry in stages.items() if key.startswith(prefix))


def test_a_run_with_roleplayer_and_judge_over_http_completes_and_a_rerun_pays_nothing(
    server, tiny_dir, tmp_path, dataset_factory
):
    from star_gate.pipeline import Pipeline

    config = mixed_config(server, tiny_dir, dataset_factory(tmp_path / "data"), tmp_path / "run")
    rows = Pipeline(config, progress=False).run_all()
    assert rows and (tmp_path / "run" / "api_cache.sqlite").exists()
    manifest = json.loads((tmp_path / "run" / "manifest.json").read_text())
    stages = manifest["stages"]
    assert (
        api_work(stages, "iter_1/simulate") > 0
        and api_work(stages, "iter_1/simulate", "api_prompt_tokens") > 0
    )
    assert api_work(stages, "eval/iter_1/judge") > 0  # the judge answered over HTTP
    assert manifest["totals"]["api_calls"] == api_work(stages, "")

    Pipeline(config, restart=True, progress=False).run_all()  # every stage again, same seeds
    rerun = json.loads((tmp_path / "run" / "manifest.json").read_text())["stages"]
    # Up to training the local questioner asks the same questions, so every answer is cached.
    for prefix in ("eval/iter_0/simulate", "iter_1/simulate"):
        assert api_work(rerun, prefix) == 0 and api_work(rerun, prefix, "api_cache_hits") > 0, (
            prefix
        )


def test_the_pre_run_check_trusts_this_server_to_judge_by_log_probs(
    server, tiny_dir, tmp_path, dataset_factory
):
    from star_gate.preflight import check_runnable

    data = dataset_factory(tmp_path / "data")
    config = mixed_config(server, tiny_dir, data, tmp_path / "run", judge_method="logprobs")
    check_runnable(config)  # the probe passes: echo with the chat template lines up
    assert not (tmp_path / "run").exists()
