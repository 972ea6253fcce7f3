"""A backend for any OpenAI-compatible server: OpenAI, vLLM, SGLang, llama.cpp's server, Ollama.

Generation uses chat completions with one request per sample: some servers (llama-cpp-python's)
ignore `n` and return one choice, so n samples are n requests, each with a seed of its own.
Requests run on a thread pool, at most `max_concurrency` in flight. A request that fails with 429,
408/409, 5xx, a timeout or a refused connection (a server restarting) is retried with exponential
backoff and jitter. Every answer goes into a persistent cache keyed by model, messages and
sampling settings (`<run_dir>/api_cache.sqlite`), so a rerun or a resumed run never pays for the
same call twice. Calls, retries, cache hits and tokens are counted (`counters`, `api_counts`) and the pipeline
stores them with each finished stage in the run's manifest.

Log-probs of a given completion need a plain completion endpoint: the chat is rendered to a prompt
with the model's chat template (a local tokenizer, `chat_template`), and prompt + completion is
sent with `echo` + `logprobs` (llama.cpp, vLLM) or with vLLM's `prompt_logprobs`; the completion's
share is found by its text at the end. A server's log-probs are never trusted untested: before the
first score, a probe checks that a counting sequence, which any language model continues almost
surely, gets log-probs near 0. llama-cpp-python's echo reports at each position the next
position's distribution evaluated at the current token, unless the prompt starts with the BOS
token (its code then drops that token and the rows line up); a misaligned server scores the probe
at about -13 nats per token and is refused for scoring. It cannot be corrected: the value needed
(position i-1's distribution at token i) is not in the answer unless it is among the top-k.
"""

from __future__ import annotations

import itertools
import logging
import os
import random
import statistics
import time
from collections import Counter
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import openai
from tqdm.auto import tqdm

from star_gate.backends.base import Chat, SamplingParams, WorkCounter
from star_gate.backends.cache import ResponseCache, cache_key
from star_gate.backends.tokens import render_chat
from star_gate.secrets import scrub_secrets
from star_gate.seeds import derive_seed

log = logging.getLogger(__name__)

T = TypeVar("T")

LOGPROB_METHODS = ("echo", "prompt_logprobs")
API_COUNTERS = (
    "api_calls",
    "api_retries",
    "api_cache_hits",
    "api_prompt_tokens",
    "api_completion_tokens",
)
RETRYABLE_STATUS = frozenset({408, 409, 429})

# The probe: any language model continues a count almost surely. SmolLM2-135M scores the tokens
# after the first few at -0.01 nats each on average (through llama.cpp too); llama.cpp's misaligned
# echo (no BOS in front) scores them at -13.
PROBE_CHAT: Chat = [{"role": "user", "content": "Count from 1 to 12, separated by commas."}]
PROBE_COMPLETION = ", ".join(str(i) for i in range(1, 13))
PROBE_SKIP = 5  # the first tokens are a real choice (how to start), not yet a pattern
PROBE_FLOOR = -1.0  # mean log-prob per token the probe must beat


class ApiError(RuntimeError):
    """A request failed for good (not retryable, or retries used up)."""


class ScoringUnavailable(ValueError):
    """The server offers no completion log-probs this backend can trust."""


class ApiKeyMissing(ValueError):
    """The environment variable that should hold the API key is empty."""


# -- retries -----------------------------------------------------------------------------------


def is_retryable(error: BaseException) -> bool:
    """Worth another try: rate limits, server errors, timeouts, dropped or refused connections."""
    if isinstance(error, openai.APIConnectionError):  # APITimeoutError is one too
        return True
    if isinstance(error, openai.APIStatusError):
        return error.status_code in RETRYABLE_STATUS or error.status_code >= 500
    return False


def retry_after_seconds(error: BaseException) -> float | None:
    """The server's Retry-After, when it gives one in seconds."""
    response = getattr(error, "response", None)
    value = response.headers.get("retry-after") if response is not None else None
    try:
        return float(value) if value is not None else None
    except ValueError:  # an HTTP date: rare enough to fall back to our own schedule
        return None


@dataclass
class RetryPolicy:
    """Exponential backoff with jitter.

    Retry k (from 0) waits between half and all of min(max_delay, base_delay * 2**k): at least
    half, so a restarting server gets real time; the random other half keeps many clients from
    retrying in lockstep. A Retry-After from the server raises the wait (up to max_delay).
    """

    max_retries: int = 6
    base_delay: float = 1.0
    max_delay: float = 30.0
    sleep: Callable[[float], None] = time.sleep
    uniform: Callable[[], float] = random.random  # in [0, 1)

    def delay(self, retry: int, retry_after: float | None = None) -> float:
        """Seconds to wait before retry number `retry`: exponential with jitter, at least the
        server's Retry-After."""
        ceiling = min(self.max_delay, self.base_delay * 2**retry)
        wait = ceiling * (0.5 + 0.5 * self.uniform())
        if retry_after is not None:
            wait = min(self.max_delay, max(wait, retry_after))
        return wait

    def run(
        self, send: Callable[[], T], on_retry: Callable[[BaseException], None] = lambda error: None
    ) -> T:
        """send() until it succeeds, fails in a way a retry cannot mend, or runs out of retries;
        on_retry hears of each retry."""
        for retry in itertools.count():
            try:
                return send()
            except Exception as error:
                if retry >= self.max_retries or not is_retryable(error):
                    raise
                on_retry(error)
                self.sleep(self.delay(retry, retry_after_seconds(error)))


# -- helpers -----------------------------------------------------------------------------------


def read_api_key(env_name: str, base_url: str) -> str:
    """The key from the environment. Local servers (llama.cpp, vLLM without --api-key) need none,
    but the client insists on one, so they get a placeholder."""
    value = os.environ.get(env_name, "")
    if value:
        return value
    if not base_url:
        raise ApiKeyMissing(
            f"environment variable {env_name} is not set, and the OpenAI API needs a key"
        )
    return "no-key"


def completion_share(
    tokens: Sequence[tuple[str, float | None]], completion: str, fallback_count: int
) -> list[float]:
    """The log-probs of the trailing tokens that spell `completion`.

    A token straddling the prompt/completion boundary (the server tokenised them together) counts
    with the completion. When the token texts do not spell it (a character split across tokens
    decodes to nothing in some servers), the last `fallback_count` tokens are taken: the local
    tokenizer's count, right whenever the server tokenises as the model's own tokenizer does.
    """
    spelled, taken = "", 0
    while len(spelled) < len(completion) and taken < len(tokens):
        taken += 1
        spelled = tokens[-taken][0] + spelled
    if not spelled.endswith(completion):
        taken = fallback_count
    values = [value for _, value in tokens[len(tokens) - taken :]]
    if len(values) != taken or any(value is None for value in values):
        raise ScoringUnavailable("the server's answer lacks log-probs for some completion tokens")
    return values


def drop_generated(
    tokens: list[tuple[str, float | None]], most: int, completion: str
) -> list[tuple[str, float | None]]:
    """The echoed tokens without the generated ones at the end. Servers differ: vLLM lists the
    generated token, llama-cpp-python does not (it has no logits row for it). So drop as many as
    `most` that leave the text ending with the completion, else none."""
    for drop in range(min(most, len(tokens)), 0, -1):
        kept = tokens[: len(tokens) - drop]
        if "".join(text for text, _ in kept).endswith(completion):
            return kept
    return tokens


# -- the backend -------------------------------------------------------------------------------


class OpenAIBackend:
    """Serve a role from an OpenAI-compatible server.

    Example:
        >>> backend = OpenAIBackend("bundled", base_url="http://127.0.0.1:8080/v1")
        >>> backend.generate([[{"role": "user", "content": "Hi"}]], SamplingParams(n=2))
    """

    def __init__(
        self,
        model: str,
        base_url: str = "",
        api_key_env: str = "OPENAI_API_KEY",
        max_concurrency: int = 4,
        request_timeout: float = 60.0,
        max_retries: int = 6,
        logprobs: str = "auto",
        chat_template: str = "",
        cache_path: str | Path | None = None,
        progress: bool = True,
        retry: RetryPolicy | None = None,
        http_client: Any = None,
    ):
        if logprobs not in ("auto", "none", *LOGPROB_METHODS):
            raise ValueError(
                f"logprobs must be auto, none or one of {LOGPROB_METHODS}, not {logprobs!r}"
            )
        api_key = read_api_key(api_key_env, base_url)
        self.name = model
        self.base_url = base_url
        self.where = base_url or "api.openai.com"
        self.max_concurrency = max_concurrency
        self.progress = progress
        self.logprob_setting = logprobs
        self.chat_template = chat_template or model
        self.retry = retry or RetryPolicy(max_retries=max_retries)
        self.cache = ResponseCache(cache_path)
        # Our own retry loop replaces the client's, so that it is counted, logged and testable.
        self.client = openai.OpenAI(
            api_key=api_key,
            base_url=base_url or None,
            timeout=request_timeout,
            max_retries=0,
            http_client=http_client,
        )
        self.work = WorkCounter("truncated_prompts", *API_COUNTERS)
        self._tokenizer = None
        self._trusted_method: str | None = None  # the log-prob method that passed the probe

    @classmethod
    def from_role(
        cls, role, model: str | None = None, progress: bool = True, cache_path=None
    ) -> OpenAIBackend:
        """Build from a role config (the fields only this backend reads)."""
        return cls(
            model or role.model,
            base_url=role.base_url,
            api_key_env=role.api_key_env,
            max_concurrency=role.max_concurrency,
            request_timeout=role.request_timeout,
            max_retries=role.max_retries,
            logprobs=role.logprobs,
            chat_template=role.chat_template,
            cache_path=cache_path,
            progress=progress,
        )

    # -- bookkeeping ----------------------------------------------------------------------------
    def api_counts(self) -> dict[str, int]:
        """Running totals: requests sent (retries included), retries, cache hits, tokens."""
        return {name: self.work.totals[name] for name in API_COUNTERS}

    def counters(self) -> dict[str, int]:
        """Work since the last call (Backend.counters): API calls, retries, cache hits, tokens."""
        return self.work.take()

    def close(self) -> None:
        """Close the answer cache and the HTTP client."""
        self.cache.close()
        self.client.close()

    # -- requests -------------------------------------------------------------------------------
    def _send(self, request: Callable[[], T]) -> T:
        """One API call with retries; its tokens are counted."""

        def attempt() -> T:
            self.work.add(api_calls=1)
            return request()

        try:
            response = self.retry.run(attempt, on_retry=self._note_retry)
        except openai.OpenAIError as error:
            raise ApiError(
                f"model {self.name!r} at {self.where}: {scrub_secrets(str(error))}"
            ) from error
        usage = getattr(response, "usage", None)
        if usage is not None:
            self.work.add(
                api_prompt_tokens=usage.prompt_tokens or 0,
                api_completion_tokens=usage.completion_tokens or 0,
            )
        return response

    def _note_retry(self, error: BaseException) -> None:
        self.work.add(api_retries=1)
        log.warning(
            "model %r at %s: retrying after %s", self.name, self.where, scrub_secrets(str(error))
        )

    def _answer_all(self, requests: list[tuple[str, Callable[[], T]]], desc: str) -> list[T]:
        """Answer (cache key, compute) requests in order: from the cache, else concurrently; equal
        keys are computed once."""
        unique = dict(requests)
        answers: dict[str, T] = {}
        missing = []
        for key, compute in unique.items():
            hit = self.cache.get(key)
            if hit is None:
                missing.append((key, compute))
            else:
                answers[key] = hit
        self.work.add(api_cache_hits=len(unique) - len(missing))
        for key, value in zip(
            [k for k, _ in missing], self._parallel([c for _, c in missing], desc)
        ):
            answers[key] = value
        return [answers[key] for key, _ in requests]

    def _parallel(self, jobs: list[Callable[[], T]], desc: str) -> list[T]:
        """Run jobs on max_concurrency threads; each job caches its answer as it lands."""
        if not jobs:
            return []
        with ThreadPoolExecutor(max_workers=min(self.max_concurrency, len(jobs))) as pool:
            futures = [pool.submit(job) for job in jobs]
            try:
                bar = tqdm(
                    futures, desc=desc, leave=False, disable=not self.progress or len(futures) < 2
                )
                return [future.result() for future in bar]
            except BaseException:
                for future in futures:  # fail fast: queued requests are not sent
                    future.cancel()
                raise

    def _cached(self, key: str, compute: Callable[[], T]) -> Callable[[], T]:
        def run() -> T:
            value = compute()
            self.cache.put(
                key, value
            )  # at once, so a crash later in the batch loses nothing paid for
            return value

        return run

    # -- generation -----------------------------------------------------------------------------
    def generate(self, chats: Sequence[Chat], params: SamplingParams) -> list[list[str]]:
        """params.n replies per chat, each its own cached request (Backend.generate)."""
        if params.temperature == 0:  # greedy is deterministic: ask once per chat, repeat
            replies = self._answer_all(
                [self._chat_request(chat, params, 0) for chat in chats], "generate"
            )
            return [[reply] * params.n for reply in replies]
        requests = [
            self._chat_request(chat, params, slot)
            for chat, first in zip(chats, self._first_slots(chats, params.n))
            for slot in range(first, first + params.n)
        ]
        replies = self._answer_all(requests, "generate")
        return [replies[i * params.n : (i + 1) * params.n] for i in range(len(chats))]

    @staticmethod
    def _first_slots(chats: Sequence[Chat], n: int) -> list[int]:
        """The first sample number of each chat. A chat that occurs again in the batch (n
        conversations of one pair start alike) takes the next n numbers, so it gets fresh samples,
        as rows of a local sampler would, instead of the cached ones."""
        seen: Counter[str] = Counter()
        firsts = []
        for chat in chats:
            fingerprint = cache_key(messages=chat)
            firsts.append(seen[fingerprint] * n)
            seen[fingerprint] += 1
        return firsts

    def _chat_request(
        self, chat: Chat, params: SamplingParams, slot: int
    ) -> tuple[str, Callable[[], str]]:
        settings: dict[str, Any] = {
            "temperature": params.temperature,
            "top_p": params.top_p,
            "max_tokens": params.max_new_tokens,
        }
        if params.temperature > 0:
            settings["seed"] = derive_seed(params.seed, slot)
        key = cache_key(kind="chat", model=self.name, messages=chat, **settings)

        def ask() -> str:
            response = self._send(
                lambda: self.client.chat.completions.create(
                    model=self.name, messages=chat, n=1, **settings
                )
            )
            return (response.choices[0].message.content or "").strip()

        return key, self._cached(key, ask)

    # -- scoring --------------------------------------------------------------------------------
    @property
    def tokenizer(self):
        """The model's own tokenizer, for its chat template (loaded on first scoring)."""
        if self._tokenizer is None:
            from transformers import AutoTokenizer

            from star_gate.backends.models import resolve_model

            self._tokenizer = AutoTokenizer.from_pretrained(resolve_model(self.chat_template))
        return self._tokenizer

    def render(self, chat: Chat) -> str:
        """The prompt a completion endpoint needs: the chat, ready for the assistant's reply."""
        return render_chat(self.tokenizer, chat)

    def logprobs(self, chats: Sequence[Chat], completions: Sequence[str]) -> list[float]:
        """log p(completion | chat) per pair, read by the probed log-prob method (Backend.logprobs)."""
        if len(chats) != len(completions):
            raise ValueError("logprobs needs one completion per chat")
        method = self.scoring_method()
        requests = [
            self._score_request(self.render(c), x, method) for c, x in zip(chats, completions)
        ]
        return self._answer_all(requests, "score")

    def _score_request(
        self, prompt: str, completion: str, method: str
    ) -> tuple[str, Callable[[], float]]:
        key = cache_key(
            kind="score", model=self.name, prompt=prompt, completion=completion, method=method
        )
        if not completion:
            return key, lambda: 0.0
        return key, self._cached(key, lambda: sum(self.token_logprobs(prompt, completion, method)))

    def token_logprobs(self, prompt: str, completion: str, method: str) -> list[float]:
        """log p of each completion token after the prompt, as the server reports it (uncached)."""
        text = prompt + completion
        if method == "echo":
            tokens = drop_generated(*self._echo_tokens(text), completion)
        else:
            tokens = self._prompt_logprob_tokens(text)
        count = len(self.tokenizer(completion, add_special_tokens=False)["input_ids"])
        return completion_share(tokens, completion, count)

    def _echo_tokens(self, text: str) -> tuple[list[tuple[str, float | None]], int]:
        """(token, log p) over the text from a completions endpoint with echo, and how many tokens
        were generated after it (max_tokens=1: llama-cpp-python reads 0 as "no limit")."""
        response = self._send(
            lambda: self.client.completions.create(
                model=self.name, prompt=text, max_tokens=1, temperature=0.0, echo=True, logprobs=1
            )
        )
        choice = response.choices[0]
        if (
            choice.logprobs is None
            or not choice.logprobs.tokens
            or choice.logprobs.token_logprobs is None
        ):
            raise ScoringUnavailable("the completions endpoint returned no echoed log-probs")
        generated = (response.usage.completion_tokens or 0) if response.usage is not None else 1
        return list(zip(choice.logprobs.tokens, choice.logprobs.token_logprobs)), generated

    def _prompt_logprob_tokens(self, text: str) -> list[tuple[str, float | None]]:
        """(token, log p) over the text from vLLM's prompt_logprobs (0: the prompt token alone)."""
        response = self._send(
            lambda: self.client.completions.create(
                model=self.name,
                prompt=text,
                max_tokens=1,
                temperature=0.0,
                extra_body={"prompt_logprobs": 0},
            )
        )
        entries = getattr(response.choices[0], "prompt_logprobs", None)
        if not entries:
            raise ScoringUnavailable("the server ignored prompt_logprobs")
        pairs: list[tuple[str, float | None]] = []
        for entry in entries:
            if not entry:  # the first token has no context
                pairs.append(("", None))
                continue
            if len(entry) != 1:
                raise ScoringUnavailable("prompt_logprobs gave several tokens per position")
            (info,) = entry.values()
            pairs.append((info.get("decoded_token") or "", info["logprob"]))
        return pairs

    # -- trusting the numbers -------------------------------------------------------------------
    def scoring_method(self) -> str:
        """The log-prob method that passed the probe; probed once, on first use.

        Raises:
            ScoringUnavailable: one sentence saying why this server cannot score.
        """
        if self._trusted_method is None:
            self._trusted_method = self._probe()
        return self._trusted_method

    def _probe(self) -> str:
        if self.logprob_setting == "none":
            raise ScoringUnavailable(
                f"model {self.name!r} at {self.where} is configured with logprobs: none"
            )
        candidates = LOGPROB_METHODS if self.logprob_setting == "auto" else (self.logprob_setting,)
        failures = []
        for method in candidates:
            failure = self._probe_failure(method)
            if failure is None:
                return method
            failures.append(f"{method}: {failure}")
        raise ScoringUnavailable(
            f"model {self.name!r} at {self.where} gives no completion log-probs that pass a check "
            f"({'; '.join(failures)})"
        )

    def _probe_failure(self, method: str) -> str | None:
        """Why `method` fails the counting probe, or None when it passes."""
        prompt = self.render(PROBE_CHAT)
        key = cache_key(
            kind="probe", model=self.name, prompt=prompt, completion=PROBE_COMPLETION, method=method
        )
        measure = self._cached(key, lambda: self.token_logprobs(prompt, PROBE_COMPLETION, method))
        try:  # cached like any answer, so a rerun pays nothing; a failure is not cached
            values = self._answer_all([(key, measure)], "probe")[0]
        except (ApiError, ScoringUnavailable) as error:
            return str(error)
        mean = statistics.fmean(values[PROBE_SKIP:])
        if mean < PROBE_FLOOR:
            return f"a counting sequence scores {mean:.1f} nats per token: misaligned log-probs"
        return None


def preflight(role, label: str, config, cache_path) -> None:
    """Before a run: the role's API key is in the environment and, for a judge that scores (the
    log-prob judge methods), its server's log-probs pass the probe (check_role)."""
    check_role(role, label, label == "roles.judge" and config.evaluate.judge_scores, cache_path)


def check_role(role, label: str, must_score: bool, cache_path: str | Path | None = None) -> None:
    """Before a run: the role's API key is in the environment and, when the role must score, its
    server's log-probs pass the probe.

    Raises:
        ConfigError: one sentence naming the role.
    """
    from star_gate.config import ConfigError

    try:
        backend = OpenAIBackend.from_role(role, progress=False, cache_path=cache_path)
    except ApiKeyMissing as error:
        raise ConfigError(f"{label}: {error}") from None
    try:
        if must_score:
            backend.scoring_method()
    except ScoringUnavailable as error:
        raise ConfigError(f"{label} cannot score: {error}") from None
    finally:
        backend.close()
