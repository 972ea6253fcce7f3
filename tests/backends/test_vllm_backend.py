"""The vLLM backend without vLLM: a stand-in `vllm` module serves the tiny model in-process.

The stand-in implements the part of vLLM's API the backend uses (LLM, SamplingParams, the
outputs) with transformers: prompt log-probs from one unpadded forward pass, entry i keyed by the
token at i (entry 0 None); n samples with distinct seeds; the refusal of a prompt that leaves no
room for a sampled token. The backend's log-probs must then equal the transformers backend's,
which computes them another way (left-padded batches); a position off by one breaks that.
The last test runs real vLLM against transformers, on a GPU with vllm installed.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import types
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import pytest
import torch
from chat_samples import CHATS, COMPLETIONS
from typer.testing import CliRunner

from star_gate.backends import load_backend
from star_gate.backends.base import SamplingParams
from star_gate.backends.hf import TransformersBackend
from star_gate.backends.tokens import (
    chat_prompt_ids,
    fit_prompt,
    keep_last,
    stop_token_ids,
    text_ids,
)
from star_gate.backends.vllm_backend import VLLMBackend, completion_logprobs
from star_gate.config import ConfigError, RoleConfig
from star_gate.seeds import derive_seed

ROOT = Path(__file__).resolve().parents[2]

LONG_CHATS = [
    [{"role": "user", "content": "Where did you grow up? " * 40}],
    [
        {"role": "system", "content": "Be brief. " * 30},
        {"role": "user", "content": "Recommend me a book."},
    ],
    [{"role": "user", "content": "Hi"}],
]


# -- the stand-in vllm module ------------------------------------------------------------------


class Logprob(NamedTuple):
    logprob: float
    rank: int | None = None
    decoded_token: str | None = None


@dataclass
class CompletionOutput:
    index: int
    text: str
    token_ids: list[int]


@dataclass
class RequestOutput:
    prompt_token_ids: list[int]
    prompt_logprobs: list | None
    outputs: list[CompletionOutput]


@dataclass
class StandInSamplingParams:
    n: int = 1
    temperature: float = 1.0
    top_p: float = 1.0
    max_tokens: int = 16
    seed: int | None = None
    stop_token_ids: list[int] = field(default_factory=list)
    prompt_logprobs: int | None = None

    def __post_init__(self):
        if self.temperature == 0 and self.n > 1:  # as older vLLM releases do
            raise ValueError("n must be 1 when using greedy sampling")


class StandInLLM:
    """vLLM's offline `LLM`, served by the tiny transformers model in this process."""

    def __init__(self, model, **engine_args):
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.engine_args = {"model": model, **engine_args}
        self.max_model_len = engine_args["max_model_len"]
        self.tokenizer = AutoTokenizer.from_pretrained(model)
        self.model = AutoModelForCausalLM.from_pretrained(model).eval()
        self.calls: list[tuple[list[list[int]], list[StandInSamplingParams]]] = []
        sys.modules["vllm"].instances.append(self)

    def get_tokenizer(self):
        return self.tokenizer

    def generate(self, prompts, sampling_params, use_tqdm=True):
        if not isinstance(sampling_params, list):
            sampling_params = [sampling_params] * len(prompts)
        assert len(sampling_params) == len(prompts)
        ids = [list(p["prompt_token_ids"]) for p in prompts]
        self.calls.append((ids, sampling_params))
        return [self._request(i, s) for i, s in zip(ids, sampling_params)]

    @torch.inference_mode()
    def _request(self, ids: list[int], params: StandInSamplingParams) -> RequestOutput:
        if len(ids) + 1 > self.max_model_len:  # vLLM: the prompt must leave room for one token
            raise ValueError(
                f"prompt of {len(ids)} tokens plus 1 is longer than {self.max_model_len}"
            )
        logprobs = None if params.prompt_logprobs is None else self._prompt_logprobs(ids)
        outputs = [self._sample(ids, params, index) for index in range(params.n)]
        return RequestOutput(ids, logprobs, outputs)

    def _prompt_logprobs(self, ids: list[int]) -> list:
        logp = torch.log_softmax(
            self.model(input_ids=torch.tensor([ids])).logits[0].float(), dim=-1
        )
        return [None] + [
            {ids[i]: Logprob(logp[i - 1, ids[i]].item(), 1)} for i in range(1, len(ids))
        ]

    def _sample(
        self, ids: list[int], params: StandInSamplingParams, index: int
    ) -> CompletionOutput:
        torch.manual_seed(params.seed + index)  # vLLM gives each of the n samples its own seed
        stops = sorted({*params.stop_token_ids, self.tokenizer.eos_token_id})
        sampling = (
            {
                "do_sample": True,
                "temperature": params.temperature,
                "top_p": params.top_p,
                "top_k": 0,
            }
            if params.temperature > 0
            else {"do_sample": False, "temperature": None, "top_p": None, "top_k": None}
        )
        out = self.model.generate(
            input_ids=torch.tensor([ids]),
            attention_mask=torch.ones(1, len(ids), dtype=torch.long),
            max_new_tokens=min(params.max_tokens, self.max_model_len - len(ids)),
            eos_token_id=stops,
            pad_token_id=self.tokenizer.pad_token_id,
            **sampling,
        )
        new = out[0, len(ids) :].tolist()
        ends = [i for i, token in enumerate(new) if token in stops]
        new = new[: ends[0] + 1] if ends else new  # vLLM keeps the stop token in token_ids
        return CompletionOutput(index, self.tokenizer.decode(new, skip_special_tokens=True), new)


@pytest.fixture
def fake_vllm(monkeypatch):
    """A stand-in `vllm` module in sys.modules; `.instances` lists the engines built."""
    module = types.ModuleType("vllm")
    module.LLM = StandInLLM
    module.SamplingParams = StandInSamplingParams
    module.instances = []
    monkeypatch.setitem(sys.modules, "vllm", module)
    return module


@pytest.fixture
def vllm_backend(fake_vllm, tiny_dir):
    return VLLMBackend(str(tiny_dir), progress=False)


def hf_backend(tiny_dir, **kwargs) -> TransformersBackend:
    return TransformersBackend(str(tiny_dir), device="cpu", progress=False, batch_size=2, **kwargs)


# -- token ids, shared with the transformers backend --------------------------------------------


def test_chat_prompt_ids_render_the_template_without_extra_special_tokens(tiny_tokenizer):
    chat = CHATS[1]
    text = tiny_tokenizer.apply_chat_template(chat, tokenize=False, add_generation_prompt=True)
    ids = chat_prompt_ids(tiny_tokenizer, chat)
    assert ids == tiny_tokenizer(text, add_special_tokens=False)["input_ids"]
    assert tiny_tokenizer.decode(ids).endswith("<|im_start|>assistant\n")
    assert tiny_tokenizer.decode(text_ids(tiny_tokenizer, "Hello!")) == "Hello!"


def test_fit_prompt_cuts_from_the_left_and_says_so(tiny_tokenizer):
    long_chat = LONG_CHATS[0]
    full = chat_prompt_ids(tiny_tokenizer, long_chat)
    ids, cut = fit_prompt(tiny_tokenizer, long_chat, max_context=64, room=10)
    assert cut and ids == full[-54:]  # the end, with the assistant header, stays
    ids, cut = fit_prompt(tiny_tokenizer, CHATS[1], max_context=64, room=10)
    assert not cut and ids == chat_prompt_ids(tiny_tokenizer, CHATS[1])
    ids, cut = fit_prompt(tiny_tokenizer, long_chat, max_context=64, room=64)
    assert cut and ids == full[-1:]  # a completion filling the context still gets one prompt token


def test_keep_last_keeps_at_least_one():
    assert keep_last([1, 2, 3], 2) == [2, 3]
    assert keep_last([1, 2, 3], 5) == [1, 2, 3]
    assert keep_last([1, 2, 3], 0) == [3]
    assert keep_last([1, 2, 3], -4) == [3]


def test_stop_token_ids_take_ids_and_lists():
    assert stop_token_ids(7, None) == [7]
    assert stop_token_ids(7, [9, 7, 8]) == [7, 8, 9]  # Llama 3 lists several end-of-turn ids
    assert stop_token_ids(None, None) == []


def test_transformers_backend_stops_at_every_listed_end_of_turn_id(tiny_model, tiny_tokenizer):
    start_id = tiny_tokenizer.convert_tokens_to_ids("<|im_start|>")
    tiny_model.generation_config.eos_token_id = [tiny_tokenizer.eos_token_id, start_id]
    backend = TransformersBackend(
        "tiny", model_object=tiny_model, tokenizer=tiny_tokenizer, device="cpu", progress=False
    )
    assert backend.stop_ids == sorted({tiny_tokenizer.eos_token_id, start_id})


# -- reading prompt log-probs -----------------------------------------------------------------


def test_completion_logprobs_read_the_last_positions():
    ids = [5, 6, 7, 8]
    entries = [None, {6: Logprob(-1.0)}, {7: Logprob(-2.0)}, {8: Logprob(-3.0), 1: Logprob(-0.1)}]
    assert completion_logprobs(entries, ids, 2) == [-2.0, -3.0]
    assert completion_logprobs(entries, ids, 3) == [-1.0, -2.0, -3.0]


def test_completion_logprobs_refuse_missing_or_misaligned_entries():
    ids = [5, 6, 7]
    with pytest.raises(RuntimeError, match="no log-prob for prompt token 2"):
        completion_logprobs([None, {6: Logprob(-1.0)}, {6: Logprob(-2.0)}], ids, 1)
    with pytest.raises(
        RuntimeError, match="2 entries of prompt log-probs for a prompt of 3 tokens"
    ):
        completion_logprobs([None, {6: Logprob(-1.0)}], ids, 1)
    with pytest.raises(RuntimeError, match="none of prompt log-probs"):
        completion_logprobs(None, ids, 1)


# -- scoring --------------------------------------------------------------------------------------


def test_logprobs_equal_the_transformers_backend(vllm_backend, tiny_backend):
    vllm_scores = vllm_backend.logprobs(CHATS, COMPLETIONS)
    assert vllm_scores == pytest.approx(tiny_backend.logprobs(CHATS, COMPLETIONS), abs=1e-4)
    assert all(s < 0 for s in vllm_scores)


def test_token_logprobs_equal_the_transformers_backend_token_by_token(vllm_backend, tiny_backend):
    ours, theirs = (
        vllm_backend.token_logprobs(CHATS, COMPLETIONS),
        tiny_backend.token_logprobs(CHATS, COMPLETIONS),
    )
    assert [len(row) for row in ours] == [
        len(text_ids(vllm_backend.tokenizer, c)) for c in COMPLETIONS
    ]
    for mine, reference in zip(ours, theirs):
        assert mine == pytest.approx(reference, abs=1e-4)


def test_scoring_is_one_request_per_text_with_prompt_logprobs(vllm_backend, fake_vllm):
    vllm_backend.logprobs(CHATS, COMPLETIONS)
    engine = fake_vllm.instances[0]
    assert len(engine.calls) == 1  # one batched call; vLLM schedules it
    prompts, params = engine.calls[0]
    for chat, completion, ids in zip(CHATS, COMPLETIONS, prompts):
        tokenizer = vllm_backend.tokenizer
        assert ids == chat_prompt_ids(tokenizer, chat) + text_ids(tokenizer, completion)
    assert {(p.max_tokens, p.prompt_logprobs, p.temperature, p.n) for p in params} == {
        (1, 0, 1.0, 1)
    }


def test_empty_completions_score_zero_without_a_request(vllm_backend, fake_vllm, tiny_backend):
    assert vllm_backend.logprobs(CHATS[:2], ["", ""]) == [0.0, 0.0]
    assert fake_vllm.instances[0].calls == []
    scores = vllm_backend.logprobs(CHATS[:2], ["", COMPLETIONS[1]])
    assert scores[0] == 0.0
    assert scores[1] == pytest.approx(
        tiny_backend.logprobs(CHATS[1:2], COMPLETIONS[1:2])[0], abs=1e-4
    )
    assert len(fake_vllm.instances[0].calls[-1][0]) == 1


def test_logprobs_need_one_completion_per_chat(vllm_backend):
    with pytest.raises(ValueError, match="one completion per chat"):
        vllm_backend.logprobs(CHATS, COMPLETIONS[:2])


def test_a_completion_filling_the_context_is_refused(fake_vllm, tiny_dir):
    backend = VLLMBackend(str(tiny_dir), max_context=64, progress=False)
    with pytest.raises(ValueError, match="leaves no room for its chat in max_context"):
        backend.logprobs(CHATS[:1], ["Where did you grow up? " * 40])


# -- generation ---------------------------------------------------------------------------------


def test_generate_returns_n_samples_per_chat_in_one_seeded_call(vllm_backend, fake_vllm):
    params = SamplingParams(n=3, temperature=1.0, top_p=0.8, max_new_tokens=6, seed=5)
    replies = vllm_backend.generate(CHATS, params)
    assert len(replies) == len(CHATS)
    assert all(len(r) == 3 and all(isinstance(t, str) for t in r) for r in replies)
    engine = fake_vllm.instances[0]
    assert len(engine.calls) == 1
    prompts, sent = engine.calls[0]
    assert prompts == [vllm_backend.encode_prompt(c, room=6) for c in CHATS]
    assert [p.seed for p in sent] == [derive_seed(5, i) for i in range(len(CHATS))]
    assert len({p.seed for p in sent}) == len(CHATS)
    assert {(p.n, p.temperature, p.top_p, p.max_tokens, tuple(p.stop_token_ids)) for p in sent} == {
        (3, 1.0, 0.8, 6, tuple(vllm_backend.stop_ids))
    }
    assert vllm_backend.generate(CHATS, params) == replies  # seeded
    assert vllm_backend.generate(CHATS, SamplingParams(**{**params.__dict__, "seed": 6})) != replies


def test_equal_chats_in_one_call_get_different_samples(vllm_backend):
    """The n conversations of a pair start with equal chats; each must get its own question."""
    params = SamplingParams(n=1, temperature=1.5, top_p=1.0, max_new_tokens=12, seed=0)
    first, second = vllm_backend.generate([CHATS[1], CHATS[1]], params)
    assert first != second


def test_greedy_replies_and_token_counts_equal_the_transformers_backend(
    vllm_backend, tiny_backend, fake_vllm
):
    params = SamplingParams(n=2, temperature=0.0, max_new_tokens=10)
    replies = vllm_backend.generate(CHATS, params)
    assert replies == tiny_backend.generate(CHATS, params)
    assert all(len(r) == 2 and r[0] == r[1] for r in replies)
    assert len({r[0] for r in replies}) > 1  # the chats really get different replies
    assert {(p.n, p.top_p) for p in fake_vllm.instances[0].calls[0][1]} == {(1, 1.0)}
    assert vllm_backend.generated_tokens == tiny_backend.generated_tokens > 0


def test_generate_with_no_chats_sends_nothing(vllm_backend, fake_vllm):
    assert vllm_backend.generate([], SamplingParams()) == []
    assert fake_vllm.instances[0].calls == []


def test_long_prompts_are_cut_and_counted_as_in_the_transformers_backend(fake_vllm, tiny_dir):
    """Same cuts, same counts, same scores; and every request fits vLLM's max_model_len, even a
    scored text that fills max_context exactly."""
    ours = VLLMBackend(str(tiny_dir), max_context=64, progress=False)
    theirs = hf_backend(tiny_dir, max_context=64)
    greedy = SamplingParams(temperature=0.0, max_new_tokens=10)
    assert ours.generate(LONG_CHATS, greedy) == theirs.generate(LONG_CHATS, greedy)
    assert ours.truncated_prompts == theirs.truncated_prompts == 2
    completions = [
        "Soup.",
        "Fiddle music and long bike rides, mostly on weekends near the sea.",
        "Hello!",
    ]
    assert ours.logprobs(LONG_CHATS, completions) == pytest.approx(
        theirs.logprobs(LONG_CHATS, completions), abs=1e-4
    )
    assert ours.truncated_prompts == theirs.truncated_prompts == 4
    scored = fake_vllm.instances[0].calls[-1][0]
    assert max(len(ids) for ids in scored) == 64


# -- building from a role ---------------------------------------------------------------------


def test_from_role_passes_the_engine_settings(fake_vllm, tiny_dir):
    role = RoleConfig.of(
        backend="vllm",
        model=str(tiny_dir),
        tensor_parallel_size=2,
        gpu_memory_utilization=0.5,
        max_context=512,
    )
    backend = load_backend(role, progress=False)
    assert isinstance(backend, VLLMBackend)
    assert fake_vllm.instances[0].engine_args == {
        "model": str(tiny_dir),
        "tensor_parallel_size": 2,
        "dtype": "bfloat16",  # 'auto', as the transformers backend reads it on a GPU
        "gpu_memory_utilization": 0.5,
        "max_model_len": 513,
        "seed": 0,
        "enable_prefix_caching": True,
    }
    assert backend.max_context == 512


def test_a_checkpoint_path_replaces_the_role_model(fake_vllm, tiny_dir):
    """The pipeline loads a fine-tuned Q_k as load_backend(role, model=<checkpoint folder>)."""
    backend = load_backend(
        RoleConfig.of(backend="vllm", dtype="float32"), model=str(tiny_dir), progress=False
    )
    assert backend.name == str(tiny_dir)
    assert fake_vllm.instances[0].engine_args["model"] == str(tiny_dir)
    assert fake_vllm.instances[0].engine_args["dtype"] == "float32"


def test_every_end_of_turn_id_of_the_generation_config_stops(
    fake_vllm, tiny_dir, tiny_tokenizer, tmp_path
):
    folder = shutil.copytree(tiny_dir, tmp_path / "model")
    start_id = tiny_tokenizer.convert_tokens_to_ids("<|im_start|>")
    config = json.loads((folder / "generation_config.json").read_text())
    config["eos_token_id"] = [tiny_tokenizer.eos_token_id, start_id]
    (folder / "generation_config.json").write_text(json.dumps(config))
    backend = VLLMBackend(str(folder), progress=False)
    assert backend.stop_ids == sorted({tiny_tokenizer.eos_token_id, start_id})


# -- without vllm -------------------------------------------------------------------------------


def test_package_and_config_work_without_vllm():
    code = (
        "import sys; sys.modules['vllm'] = None\n"
        "import star_gate.backends, star_gate.backends.vllm_backend\n"
        "from star_gate.config import RunConfig\n"
        "role = {'backend': 'vllm', 'tensor_parallel_size': 2}\n"
        "c = RunConfig.model_validate({'roles': {'questioner': role}})\n"
        "print(c.roles.questioner.backend, c.roles.questioner.tensor_parallel_size)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "vllm 2"


def test_backend_without_vllm_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "vllm", None)
    with pytest.raises(ConfigError, match=r"pip install 'star-gate\[vllm\]'"):
        VLLMBackend("bundled")


@pytest.mark.parametrize("role", ["questioner", "judge"])
def test_run_refuses_a_vllm_role_without_the_package(
    monkeypatch, tmp_path, dataset_dir, fake_config_file, role
):
    monkeypatch.setitem(sys.modules, "vllm", None)
    monkeypatch.setenv("COLUMNS", "500")  # rich would otherwise wrap the message
    path = fake_config_file(tmp_path, dataset_dir)
    from star_gate.cli import app

    runner = CliRunner()
    assert runner.invoke(app, ["validate", str(path), f"roles.{role}.backend=vllm"]).exit_code == 0
    result = runner.invoke(app, ["run", str(path), f"roles.{role}.backend=vllm"])
    assert result.exit_code == 2, result.output
    assert f"roles.{role} uses backend vllm, but the vllm package is not installed" in result.output
    assert "pip install 'star-gate[vllm]'" in result.output
    assert not (tmp_path / "run").exists()  # refused before the run directory is made


# -- the benchmark --------------------------------------------------------------------------------


def test_benchmark_dry_run_builds_prompts_without_loading_a_model():
    script = ROOT / "benchmarks" / "vllm_vs_transformers.py"
    out = subprocess.run(
        [sys.executable, str(script), "--dry-run", "--pairs", "3", "--n", "2"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert "pairs=3 n=2" in out.stdout and "scored texts=6" in out.stdout


def test_benchmark_agreement_is_exact_for_equal_models(
    vllm_backend, tiny_backend, dataset, benchmark_script
):
    bench = benchmark_script("vllm_vs_transformers")
    pairs = dataset.pairs("A")
    chats, golds = bench.scoring_texts(pairs)
    assert len(chats) == len(golds) == 2 * len(pairs)
    agreement = bench.compare_logprobs(tiny_backend, vllm_backend, chats, golds)
    assert agreement["tokens"] == sum(len(text_ids(vllm_backend.tokenizer, g)) for g in golds)
    assert agreement["max"] < 1e-4
    assert bench.order_effect(vllm_backend, chats, golds) < 1e-4
    assert len(bench.generation_chats(pairs)) == len(pairs)


def test_benchmark_differences_are_per_token(benchmark_script):
    bench = benchmark_script("vllm_vs_transformers")
    result = bench.logprob_differences([[-1.0, -2.0], [-0.5]], [[-1.5, -2.0], [-0.4]])
    assert result == {"tokens": 3, "max": pytest.approx(0.5), "median": pytest.approx(0.1)}
    with pytest.raises(ValueError, match="tokenized the texts differently"):
        bench.logprob_differences([[-1.0]], [[-1.0, -2.0]])


# -- real vLLM ----------------------------------------------------------------------------------


@pytest.mark.slow
def test_real_vllm_agrees_with_transformers_on_the_bundled_model(dataset, benchmark_script):
    pytest.importorskip("vllm")
    if not torch.cuda.is_available():
        pytest.skip("vLLM needs a GPU")
    pairs = dataset.pairs("A")
    bench = benchmark_script("vllm_vs_transformers")
    chats, golds = bench.scoring_texts(pairs)
    fast = VLLMBackend("bundled", dtype="bfloat16", gpu_memory_utilization=0.3, progress=False)
    reference = TransformersBackend("bundled", device="cuda", dtype="bfloat16", progress=False)
    agreement = bench.compare_logprobs(reference, fast, chats, golds)
    assert agreement["median"] < 0.05 and agreement["max"] < 1.0  # bf16 kernels differ a little
    assert bench.order_effect(fast, chats, golds) < 0.05
    replies = fast.generate(bench.generation_chats(pairs), SamplingParams(n=3, max_new_tokens=16))
    assert all(len(r) == 3 and all(isinstance(t, str) for t in r) for r in replies)
    assert fast.generated_tokens > 0
