"""The OpenAI-compatible backend without a server: backoff, caching, sampling by repetition,
picking the completion's log-probs, the trust probe, and config refusals.

An in-process stand-in answers HTTP here (httpx.MockTransport), so the request logic is tested
exactly; tests/backends/test_llama_server.py runs the same backend against a real llama.cpp server.
"""

from __future__ import annotations

import importlib
import json
import socket
from pathlib import Path

import openai
import pytest

from star_gate.backends import load_backend
from star_gate.backends.base import SamplingParams
from star_gate.backends.cache import ResponseCache, cache_key
from star_gate.backends.openai_compat import (
    PROBE_COMPLETION,
    OpenAIBackend,
    RetryPolicy,
    ScoringUnavailable,
    check_role,
    completion_share,
    drop_generated,
    is_retryable,
)
from star_gate.config import ConfigError, RoleConfig, load_config
from star_gate.seeds import derive_seed

# The HTTP library the installed openai client talks through (httpx2 in newer releases, else httpx).
httpx = importlib.import_module("httpx2" if hasattr(openai._base_client, "httpx2") else "httpx")

MIXED = Path(__file__).resolve().parents[2] / "configs" / "mixed.yaml"
CHAT = [{"role": "user", "content": "Recommend me a book."}]
OTHER_CHAT = [{"role": "user", "content": "What should I cook tonight?"}]
REQUEST = httpx.Request("POST", "http://server/v1/chat/completions")


def status_error(status: int, headers: dict | None = None) -> openai.APIStatusError:
    response = httpx.Response(status, headers=headers, request=REQUEST)
    return openai.APIStatusError(f"HTTP {status}", response=response, body=None)


# -- an in-process stand-in for a server ----------------------------------------------------------


class StandIn:
    """Answers chat completions with a text naming the request's seed, and completions (echo or
    prompt_logprobs) with one token per character and a chosen log-prob per token."""

    def __init__(self, token_logprob: float = -0.01, echo_status: int = 200):
        self.requests: list[dict] = []
        self.token_logprob = token_logprob
        self.echo_status = echo_status

    def __call__(self, request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content)
        self.requests.append({"path": request.url.path, **body})
        usage = {"prompt_tokens": 7, "completion_tokens": 3, "total_tokens": 10}
        if request.url.path.endswith("/chat/completions"):
            text = f"reply seed={body.get('seed')} to {body['messages'][-1]['content']}"
            choice = {
                "index": 0,
                "message": {"role": "assistant", "content": text},
                "finish_reason": "stop",
            }
            return httpx.Response(200, json=self._envelope("chat.completion", [choice], usage))
        if "prompt_logprobs" in body:
            return self._prompt_logprobs(body["prompt"], usage)
        if self.echo_status != 200:
            return httpx.Response(
                self.echo_status, json={"error": {"message": "echo is not supported"}}
            )
        return self._echo(body["prompt"], usage)

    def _echo(self, prompt: str, usage: dict) -> httpx.Response:
        tokens = [*prompt, "!"]  # the generated token comes last, and usage counts it
        logprobs = {
            "tokens": tokens,
            "token_logprobs": [None] + [self.token_logprob] * (len(tokens) - 1),
            "text_offset": list(range(len(tokens))),
            "top_logprobs": None,
        }
        choice = {"index": 0, "text": prompt + "!", "logprobs": logprobs, "finish_reason": "length"}
        usage = {**usage, "completion_tokens": 1}
        return httpx.Response(200, json=self._envelope("text_completion", [choice], usage))

    def _prompt_logprobs(self, prompt: str, usage: dict) -> httpx.Response:
        entries = [None] + [
            {str(1000 + i): {"logprob": self.token_logprob, "rank": 1, "decoded_token": ch}}
            for i, ch in enumerate(prompt[1:])
        ]
        choice = {
            "index": 0,
            "text": "!",
            "logprobs": None,
            "finish_reason": "length",
            "prompt_logprobs": entries,
        }
        return httpx.Response(200, json=self._envelope("text_completion", [choice], usage))

    @staticmethod
    def _envelope(kind: str, choices: list, usage: dict) -> dict:
        return {
            "id": "x",
            "object": kind,
            "created": 0,
            "model": "m",
            "choices": choices,
            "usage": usage,
        }

    def paths(self) -> list[str]:
        return [r["path"].rsplit("/v1", 1)[-1] for r in self.requests]


@pytest.fixture
def stand_in():
    return StandIn()


@pytest.fixture
def make_backend(tiny_dir, tmp_path):
    """make_backend(stand_in, **kwargs) -> an OpenAIBackend talking to the stand-in."""
    made = []

    def make(server: StandIn, **kwargs) -> OpenAIBackend:
        settings = {
            "base_url": "http://server/v1",
            "chat_template": str(tiny_dir),
            "progress": False,
            "cache_path": tmp_path / "api_cache.sqlite",
            "retry": RetryPolicy(sleep=lambda s: None),
            **kwargs,
        }
        backend = OpenAIBackend(
            "m", http_client=httpx.Client(transport=httpx.MockTransport(server)), **settings
        )
        made.append(backend)
        return backend

    yield make
    for backend in made:
        backend.close()


# -- retries --------------------------------------------------------------------------------------


def test_backoff_doubles_from_half_to_all_of_each_step_up_to_the_cap():
    low = RetryPolicy(base_delay=1.0, max_delay=8.0, uniform=lambda: 0.0)
    high = RetryPolicy(base_delay=1.0, max_delay=8.0, uniform=lambda: 1.0)
    assert [low.delay(k) for k in range(6)] == [0.5, 1.0, 2.0, 4.0, 4.0, 4.0]
    assert [high.delay(k) for k in range(6)] == [1.0, 2.0, 4.0, 8.0, 8.0, 8.0]


def test_retry_after_lengthens_the_wait_up_to_the_cap():
    policy = RetryPolicy(base_delay=1.0, max_delay=8.0, uniform=lambda: 0.0)
    assert policy.delay(0, retry_after=3.0) == 3.0
    assert policy.delay(0, retry_after=60.0) == 8.0
    assert policy.delay(3, retry_after=0.1) == 4.0


@pytest.mark.parametrize(
    ("error", "retry"),
    [
        (status_error(429), True),
        (status_error(500), True),
        (status_error(503), True),
        (status_error(408), True),
        (openai.APITimeoutError(request=REQUEST), True),
        (openai.APIConnectionError(request=REQUEST), True),
        (status_error(400), False),
        (status_error(401), False),
        (status_error(404), False),
        (ValueError("a bug"), False),
    ],
    ids=["429", "500", "503", "408", "timeout", "refused", "400", "401", "404", "bug"],
)
def test_which_errors_are_retried(error, retry):
    assert is_retryable(error) is retry


def test_run_sleeps_on_the_schedule_then_succeeds():
    slept: list[float] = []
    failures = [
        status_error(429, {"retry-after": "5"}),
        status_error(503),
        openai.APITimeoutError(request=REQUEST),
    ]

    def send():
        if failures:
            raise failures.pop(0)
        return "answer"

    retried = []
    policy = RetryPolicy(
        max_retries=3, base_delay=1.0, max_delay=30.0, sleep=slept.append, uniform=lambda: 0.0
    )
    assert policy.run(send, on_retry=retried.append) == "answer"
    assert slept == [5.0, 1.0, 2.0]  # Retry-After first, then half of 2 s and 4 s
    assert len(retried) == 3


def test_run_gives_up_after_max_retries_and_never_retries_a_bad_request():
    slept: list[float] = []
    policy = RetryPolicy(max_retries=2, sleep=slept.append, uniform=lambda: 0.0)

    def always(error):
        def send():
            raise error

        return send

    with pytest.raises(openai.APIStatusError):
        policy.run(always(status_error(500)))
    assert len(slept) == 2
    with pytest.raises(openai.APIStatusError):
        policy.run(always(status_error(400)))
    assert len(slept) == 2


def test_backend_counts_retries_and_calls(make_backend):
    server, flaky = StandIn(), {"left": 2}

    def handler(request):
        if flaky["left"]:
            flaky["left"] -= 1
            return httpx.Response(503, json={"error": {"message": "busy"}})
        return server(request)

    backend = make_backend(handler)
    assert backend.generate([CHAT], SamplingParams(temperature=0.0)) == [
        [f"reply seed=None to {CHAT[0]['content']}"]
    ]
    counts = backend.api_counts()
    assert counts["api_calls"] == 3 and counts["api_retries"] == 2
    assert counts["api_prompt_tokens"] == 7 and counts["api_completion_tokens"] == 3


def test_a_request_that_keeps_failing_names_the_server(make_backend):
    backend = make_backend(
        lambda request: httpx.Response(401, json={"error": {"message": "bad key"}})
    )
    with pytest.raises(RuntimeError, match=r"model 'm' at http://server/v1: .*401"):
        backend.generate([CHAT], SamplingParams())


# -- caching --------------------------------------------------------------------------------------


def test_cache_key_ignores_order_and_sees_every_part():
    base = cache_key(model="m", messages=CHAT, temperature=0.7, seed=1)
    assert cache_key(seed=1, temperature=0.7, messages=CHAT, model="m") == base
    assert cache_key(model="m", messages=CHAT, temperature=0.7, seed=2) != base
    assert cache_key(model="m2", messages=CHAT, temperature=0.7, seed=1) != base
    assert cache_key(model="m", messages=OTHER_CHAT, temperature=0.7, seed=1) != base
    assert cache_key(model="m", messages=CHAT, temperature=0.8, seed=1) != base


def test_sqlite_cache_survives_reopening(tmp_path):
    cache = ResponseCache(tmp_path / "c.sqlite")
    cache.put("k", {"text": "é", "n": 1})
    cache.close()
    again = ResponseCache(tmp_path / "c.sqlite")
    assert (
        again.get("k") == {"text": "é", "n": 1} and again.get("other") is None and len(again) == 1
    )
    again.close()
    memory = ResponseCache()
    memory.put("k", 1.5)
    assert memory.get("k") == 1.5


def test_second_backend_on_the_same_cache_makes_no_calls(make_backend, stand_in):
    params = SamplingParams(n=2, temperature=0.7, seed=3)
    first = make_backend(stand_in)
    replies = first.generate([CHAT, OTHER_CHAT], params)
    scores = first.logprobs([CHAT], ["A good book."])
    calls = len(stand_in.requests)
    second = make_backend(stand_in)
    assert second.generate([CHAT, OTHER_CHAT], params) == replies
    assert second.logprobs([CHAT], ["A good book."]) == scores
    assert len(stand_in.requests) == calls  # nothing new was sent
    assert second.api_counts()["api_calls"] == 0 and second.api_counts()["api_cache_hits"] == 6
    other_seed = second.generate([CHAT], SamplingParams(n=2, temperature=0.7, seed=4))
    assert other_seed != replies[:1] and len(stand_in.requests) == calls + 2


# -- sampling by repetition -----------------------------------------------------------------------


def test_n_samples_are_n_requests_with_their_own_seeds(make_backend, stand_in):
    backend = make_backend(stand_in)
    replies = backend.generate([CHAT, OTHER_CHAT], SamplingParams(n=3, temperature=0.7, seed=9))
    assert [len(r) for r in replies] == [3, 3]
    assert all(len(set(r)) == 3 for r in replies)  # three distinct seeds, three distinct replies
    assert all(request["n"] == 1 for request in stand_in.requests) and len(stand_in.requests) == 6
    seeds = {request["seed"] for request in stand_in.requests}
    assert seeds == {derive_seed(9, slot) for slot in range(3)}
    assert replies[1][0].endswith(OTHER_CHAT[0]["content"])  # input order kept


def test_a_chat_repeated_in_a_batch_gets_fresh_samples(make_backend, stand_in):
    """n conversations of one pair start with the same chat: each must get its own sample."""
    backend = make_backend(stand_in)
    replies = backend.generate([CHAT, CHAT, CHAT], SamplingParams(temperature=0.7))
    assert len({r[0] for r in replies}) == 3


def test_greedy_asks_once_and_repeats(make_backend, stand_in):
    backend = make_backend(stand_in)
    replies = backend.generate([CHAT, CHAT], SamplingParams(n=3, temperature=0.0))
    assert replies == [[replies[0][0]] * 3] * 2
    assert len(stand_in.requests) == 1 and "seed" not in stand_in.requests[0]


# -- log-probs ------------------------------------------------------------------------------------


def tokens_of(*texts: str, value: float = -1.0) -> list[tuple[str, float]]:
    return [(text, value) for text in texts]


def test_completion_share_takes_the_tokens_that_spell_the_completion():
    tokens = tokens_of("<s>", "user", "\n", "Hi", "\n", value=-9.0) + [(" Par", -1.0), ("is", -0.5)]
    assert completion_share(tokens, " Paris", fallback_count=1) == [-1.0, -0.5]


def test_a_token_straddling_the_boundary_counts_with_the_completion():
    tokens = tokens_of("Hi", "\n", value=-9.0) + [(":P", -2.0), ("aris", -0.5)]
    assert completion_share(tokens, "Paris", fallback_count=1) == [-2.0, -0.5]


def test_unspellable_completions_fall_back_to_the_local_token_count():
    tokens = tokens_of(
        "Hi", "", "", value=-1.0
    )  # a character whose bytes decode to nothing per token
    assert completion_share(tokens, "é", fallback_count=2) == [-1.0, -1.0]


def test_generated_tokens_are_dropped_only_when_listed():
    echoed = tokens_of("\n", "The", " capital", " of", " France")
    listed = [*echoed, (".", -0.1)]  # vLLM lists the generated token
    assert drop_generated(listed, 1, " capital of France") == echoed
    assert drop_generated(echoed, 1, " capital of France") == echoed  # llama-cpp-python does not
    assert drop_generated([*echoed, ("", -0.1)], 1, " France") == echoed  # an end-of-turn token


def test_missing_values_are_refused():
    with pytest.raises(ScoringUnavailable, match="lacks log-probs"):
        completion_share([("Hi", None)], "Hi", fallback_count=1)


@pytest.mark.parametrize("method", ["echo", "prompt_logprobs"])
def test_logprobs_sum_the_completion_share(make_backend, method, tiny_tokenizer):
    server = StandIn(token_logprob=-0.25)
    backend = make_backend(server, logprobs=method)
    scores = backend.logprobs([CHAT, OTHER_CHAT], ["Dune.", ""])
    assert scores == [pytest.approx(-0.25 * len("Dune.")), 0.0]  # one stand-in token per character
    sent = [r for r in server.requests if PROBE_COMPLETION not in r["prompt"]]
    rendered = tiny_tokenizer.apply_chat_template(CHAT, tokenize=False, add_generation_prompt=True)
    assert [r["prompt"] for r in sent] == [rendered + "Dune."]  # the empty completion costs nothing
    assert sent[0]["max_tokens"] == 1  # llama.cpp reads 0 as "no limit"


def test_auto_takes_prompt_logprobs_when_echo_is_refused(make_backend):
    server = StandIn(echo_status=400)
    backend = make_backend(server)
    assert backend.scoring_method() == "prompt_logprobs"
    assert backend.logprobs([CHAT], ["Dune."]) == [pytest.approx(-0.05)]


def test_misaligned_log_probs_are_refused_in_one_sentence(make_backend):
    backend = make_backend(StandIn(token_logprob=-14.0))
    with pytest.raises(ScoringUnavailable) as caught:
        backend.logprobs([CHAT], ["Dune."])
    message = str(caught.value)
    assert "no completion log-probs that pass a check" in message and "misaligned" in message
    assert "\n" not in message


def test_logprobs_none_refuses_to_score(make_backend, stand_in):
    backend = make_backend(stand_in, logprobs="none")
    with pytest.raises(ScoringUnavailable, match="logprobs: none"):
        backend.logprobs([CHAT], ["Dune."])
    assert stand_in.requests == []


# -- configuration ---------------------------------------------------------------------------------


def test_load_backend_builds_from_the_role(tmp_path, monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    role = RoleConfig.of(
        backend="openai", model="served", base_url="http://127.0.0.1:9/v1", max_concurrency=2
    )
    backend = load_backend(role, cache_path=tmp_path / "c.sqlite")
    assert (
        isinstance(backend, OpenAIBackend)
        and backend.name == "served"
        and backend.max_concurrency == 2
    )
    assert (tmp_path / "c.sqlite").exists()
    backend.close()


def test_the_questioner_cannot_be_served_over_http():
    with pytest.raises(ConfigError, match="roles.questioner.backend cannot be 'openai'"):
        load_config(None, ["roles.questioner.backend=openai"])


def test_a_judge_without_log_probs_cannot_judge_by_log_probs():
    overrides = ["roles.judge.backend=openai", "roles.judge.logprobs=none"]
    with pytest.raises(ConfigError, match="roles.judge has logprobs: none"):
        load_config(None, overrides)
    assert (
        load_config(None, [*overrides, "evaluate.judge_method=generate"]).roles.judge.logprobs
        == "none"
    )


def test_a_key_in_api_key_env_is_refused_without_echoing_it():
    with pytest.raises(ConfigError) as caught:
        load_config(
            None, ["roles.judge.backend=openai", "roles.judge.api_key_env=sk-abc123secretvalue"]
        )
    assert "must name an environment variable" in str(caught.value)
    assert "abc123" not in str(caught.value)


def test_a_missing_key_is_refused_naming_the_role(monkeypatch):
    monkeypatch.delenv("MY_KEY", raising=False)
    role = RoleConfig.of(backend="openai", model="gpt-4o-mini", api_key_env="MY_KEY")
    with pytest.raises(
        ConfigError, match="roles.roleplayer: environment variable MY_KEY is not set"
    ):
        check_role(role, "roles.roleplayer", must_score=False)


@pytest.fixture
def run_cli(tmp_path, dataset_dir, monkeypatch):
    """run_cli(roles_yaml) -> `star-gate run` on a fake-questioner config with these roles."""
    from typer.testing import CliRunner

    from star_gate.cli import app

    monkeypatch.setenv("COLUMNS", "500")

    def run(roles: str):
        config = tmp_path / "c.yaml"
        config.write_text(
            f"run_dir: {tmp_path / 'run'}\ndata: {{path: {dataset_dir}}}\n"
            f"roles:\n  questioner: {{backend: fake}}\n{roles}"
        )
        return CliRunner().invoke(app, ["run", str(config)])

    return run


def test_run_exits_2_before_creating_the_run_dir_when_a_key_is_missing(
    run_cli, tmp_path, monkeypatch
):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    result = run_cli("  roleplayer: {backend: openai, model: gpt-4o-mini, mode: persona}\n")
    assert result.exit_code == 2
    assert "roles.roleplayer: environment variable OPENAI_API_KEY is not set" in result.output
    assert not (tmp_path / "run").exists()


def test_a_judge_whose_server_cannot_score_stops_the_run_before_it_starts(
    run_cli, tmp_path, tiny_dir
):
    with socket.socket() as probe:  # a port nobody listens on: every request is refused
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    result = run_cli(
        "  roleplayer: {backend: fake, mode: persona}\n"
        f"  judge: {{backend: openai, model: m, base_url: 'http://127.0.0.1:{port}/v1', "
        f"chat_template: '{tiny_dir}', max_retries: 0}}\n"
    )
    assert result.exit_code == 2
    message = " ".join(result.output.split())
    assert "roles.judge cannot score: model 'm' at http://127.0.0.1:" in message
    assert "no completion log-probs that pass a check" in message
    assert not (tmp_path / "run").exists()


def test_mixed_config_has_a_local_questioner_and_api_roles():
    config = load_config(MIXED)
    roles = config.roles
    assert roles.questioner.backend == "transformers"
    assert {roles.roleplayer.backend, roles.oracle.backend, roles.judge.backend} == {"openai"}
    assert roles.roleplayer.mode != "facts"  # the API model really plays the roleplayer
    assert config.evaluate.judge_method == "generate"  # the OpenAI API cannot score a given text
    assert all(
        r.api_key_env == "OPENAI_API_KEY" for r in (roles.roleplayer, roles.oracle, roles.judge)
    )
