"""Shared fixtures: a tiny in-process chat model and a small dataset folder.

Nothing here touches the network. The tiny model is a randomly initialised two-layer Llama with a
byte-level BPE tokenizer trained on an in-memory corpus, saved once per session to a temporary
folder so that code which loads models by path can use it too.

Tests marked `slow` load the bundled SmolLM2 model (minutes on a CPU); `pytest -m "not slow"`
skips them. `make test` (and CI) runs everything.
"""

from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path

import pytest

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

CHATML = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] "
    "+ '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}"
    "{% endif %}"
)


def pytest_configure(config):
    # The tiny model gains nothing from threads, and OpenMP threads spinning against another busy
    # process on a 2-core machine can make a 0.1 s generate take 10 s.
    import torch

    torch.set_num_threads(1)


# -- the tiny model -------------------------------------------------------------------------------


def _corpus() -> list[str]:
    from star_gate.roles.prompts import FINAL_CUE, PERSONA_CONTEXT, TEMPLATES

    texts = [t.system for t in TEMPLATES.values()]
    texts += [content for t in TEMPLATES.values() for _, content in t.few_shot]
    texts += [FINAL_CUE, PERSONA_CONTEXT]
    texts += [row["text"] for row in TASKS] + [row["description"] for row in PERSONAS]
    texts += ["user assistant system", "Where did you grow up? I grew up on a farm near the sea."]
    return texts * 2


def build_tiny_tokenizer():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    core = Tokenizer(models.BPE())
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=700,
        special_tokens=["<|im_start|>", "<|im_end|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    core.train_from_iterator(_corpus(), trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=core,
        eos_token="<|im_end|>",
        pad_token="<|im_end|>",
        additional_special_tokens=["<|im_start|>"],
        clean_up_tokenization_spaces=False,
    )
    tokenizer.chat_template = CHATML
    return tokenizer


def build_tiny_model(tokenizer, initializer_range: float = 0.02):
    """A 2-layer Llama on the tiny tokenizer. A larger initializer_range (0.3) makes every output
    depend strongly on the whole context, which tests of positions and masks need."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(1234)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=4096,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=None,
        initializer_range=initializer_range,
    )
    model = LlamaForCausalLM(config)
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model.eval()


def build_tiny_gpt2(tokenizer, initializer_range: float = 0.02):
    """A 2-layer GPT-2 on the tiny tokenizer: learned absolute positions, so a wrong position id
    changes every log-prob."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    config = GPT2Config(
        vocab_size=len(tokenizer),
        n_embd=32,
        n_layer=2,
        n_head=4,
        n_positions=1024,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        initializer_range=initializer_range,
    )
    model = GPT2LMHeadModel(config)
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    return model.eval()


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory) -> Path:
    """A folder holding the tiny model and its tokenizer, loadable with from_pretrained."""
    folder = tmp_path_factory.mktemp("tiny-model")
    tokenizer = build_tiny_tokenizer()
    build_tiny_model(tokenizer).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_tokenizer(tiny_dir):
    """The tiny model's tokenizer (shared: copy it before changing it)."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_dir)


@pytest.fixture
def tiny_model(tiny_dir):
    """A fresh copy of the tiny model's initial weights."""
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(tiny_dir).eval()


@pytest.fixture
def tiny_backend(tiny_model, tiny_tokenizer):
    from star_gate.backends.hf import TransformersBackend

    return TransformersBackend(
        model="tiny",
        model_object=tiny_model,
        tokenizer=tiny_tokenizer,
        progress=False,
        device="cpu",
        batch_size=2,
    )


# -- a small dataset -------------------------------------------------------------------------------

TASKS = [
    {"task_id": "t1", "text": "What should I cook tonight?"},
    {"task_id": "t2", "text": "Recommend me a book."},
    {"task_id": "t3", "text": "Where should I go on vacation this year?"},
    {"task_id": "t4", "text": "How should I start saving money?"},
    {"task_id": "t5", "text": "Suggest a hobby I could pick up."},
    {"task_id": "t6", "text": "What music should I listen to while working?"},
]
PERSONAS = [
    {
        "persona_id": f"p{i}",
        "name": name,
        "description": f"My name is {name}. I grew up in {home}. I work as {job}. I love {love}.",
    }
    for i, (name, home, job, love) in enumerate(
        [
            ("Aoife Brennan", "a farm in County Mayo", "a retired teacher", "Irish fiddle music"),
            ("Kenji Sato", "a flat in Osaka", "a software engineer", "long bike rides"),
            (
                "Maria Lopez",
                "a fishing village in Galicia",
                "a nurse on night shifts",
                "spicy food",
            ),
            ("Tom Becker", "a suburb of Munich", "a bus driver", "crime novels"),
            ("Priya Nair", "the city of Kochi", "an architect", "painting with watercolours"),
            ("Sam Okafor", "a town near Lagos", "a chef", "jazz records"),
        ],
        start=1,
    )
]
SPLITS = {
    "A": {"tasks": ["t1", "t2"], "personas": ["p1", "p2"]},
    "B": {"tasks": ["t3", "t4"], "personas": ["p3", "p4"]},
    "test": {"tasks": ["t5", "t6"], "personas": ["p5", "p6"]},
}


def gold_rows() -> list[dict]:
    tasks = {t["task_id"]: t["text"] for t in TASKS}
    names = {p["persona_id"]: p["name"] for p in PERSONAS}
    return [
        {
            "task_id": t,
            "persona_id": p,
            "text": f"{names[p].split()[0]}, here is my answer to '{tasks[t]}' that fits your life.",
            "oracle": "tests",
        }
        for spec in SPLITS.values()
        for t in spec["tasks"]
        for p in spec["personas"]
    ]


def write_dataset(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name, rows in (
        ("tasks.jsonl", TASKS),
        ("personas.jsonl", PERSONAS),
        ("gold.jsonl", gold_rows()),
    ):
        (folder / name).write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    (folder / "splits.json").write_text(json.dumps(SPLITS, indent=1), encoding="utf-8")
    return folder


def write_fake_config(
    folder: Path, dataset_dir: Path, extra: str = "", questioner_model: Path | None = None
) -> Path:
    """A config file whose every role is served by the fake backend (no model loads).

    questioner_model names the model that training starts from (the fake backend ignores it)."""
    path = folder / "config.yaml"
    questioner = (
        f"{{backend: fake, model: {questioner_model}}}" if questioner_model else "{backend: fake}"
    )
    path.write_text(
        f"run_dir: {folder / 'run'}\n"
        f"data: {{path: {dataset_dir}}}\n"
        "roles:\n"
        f"  questioner: {questioner}\n"
        "  roleplayer: {backend: fake, mode: persona}\n"
        "  judge: {backend: fake}\n"
        "simulate: {conversations_per_pair: 2, max_turns: 2}\n" + extra
    )
    return path


@pytest.fixture
def fake_config_file():
    """write_fake_config(folder, dataset_dir, extra='') -> path of a fake-backend config there."""
    return write_fake_config


@pytest.fixture(scope="session")
def dataset_factory():
    """write_dataset(folder) -> folder: writes the small dataset there (for wider-scoped fixtures)."""
    return write_dataset


@pytest.fixture
def dataset_dir(tmp_path) -> Path:
    """A valid dataset folder: 6 tasks, 6 personas, 12 gold; splits A, B, test of 2 x 2 pairs."""
    return write_dataset(tmp_path / "dataset")


@pytest.fixture
def dataset(dataset_dir):
    from star_gate.data.loaders import load_dataset

    return load_dataset(dataset_dir)


def tiny_run_config(root: Path, model: Path, data: Path, **sections):
    """A run of the tiny model as questioner, scorer and judge, with the fake roleplayer, on the
    small dataset; each keyword replaces or extends one section (e.g. train={...})."""
    from star_gate.config import RunConfig

    tree = {
        "run_dir": str(root / "run"),
        "seed": 0,
        "iterations": 2,
        "data": {"path": str(data)},
        "roles": {
            "questioner": {
                "model": str(model),
                "backend": "transformers",
                "device": "cpu",
                "max_new_tokens": 6,
                "batch_size": 8,
            },
            "roleplayer": {"backend": "fake", "mode": "persona"},
            "judge": {"model": str(model), "backend": "transformers", "device": "cpu"},
        },
        "simulate": {"conversations_per_pair": 2, "max_turns": 2, "chunk_pairs": 2},
        "select": {"top_k": 1},
        "regularize": {"max_new_tokens": 6},
        "train": {
            "batch_size": 2,
            "learning_rate": 1e-3,
            "validation_fraction": 0.25,
            "max_length": 2048,
        },
        "evaluate": {"conversations_per_pair": 1},
    }
    for name, value in sections.items():
        tree[name] = {**tree.get(name, {}), **value} if isinstance(value, dict) else value
    return RunConfig.model_validate(tree)


@pytest.fixture(scope="session")
def tiny_config():
    """tiny_run_config(root, model, data, **sections) -> RunConfig."""
    return tiny_run_config


@pytest.fixture(scope="session")
def tiny_run(tiny_dir, tmp_path_factory, dataset_factory):
    """A whole 2-iteration run (tiny_run_config), once. Returns (config, eval rows). Tests only
    read it."""
    from star_gate.pipeline import Pipeline

    root = tmp_path_factory.mktemp("tiny-run")
    config = tiny_run_config(root, tiny_dir, dataset_factory(root / "data"))
    rows = Pipeline(config, progress=False).run_all()
    return config, rows


# -- recording wrappers ---------------------------------------------------------------------------


class RecordingBackend:
    """Wraps a backend and records every call: (method, chats, params or completions)."""

    def __init__(self, inner):
        self.inner = inner
        self.name = inner.name
        self.calls: list[tuple[str, list, object]] = []

    def generate(self, chats, params):
        self.calls.append(("generate", [list(c) for c in chats], params))
        return self.inner.generate(chats, params)

    def logprobs(self, chats, completions):
        self.calls.append(("logprobs", [list(c) for c in chats], list(completions)))
        return self.inner.logprobs(chats, completions)

    def counters(self):
        return self.inner.counters()


@pytest.fixture
def recording():
    """Factory: recording(backend) -> a RecordingBackend around it."""
    return RecordingBackend


@pytest.fixture
def fake():
    from star_gate.backends.fake import FakeBackend

    return FakeBackend()


@pytest.fixture(scope="session")
def retriever():
    """The bundled all-MiniLM-L6-v2 fact retriever (about 2 s to load, once per session)."""
    from star_gate.roles.grounding import FactRetriever

    return FactRetriever("bundled")


@pytest.fixture(scope="session")
def benchmark_script():
    """benchmark_script(name) -> the module of benchmarks/<name>.py (the folder is no package)."""

    def load(name: str):
        path = Path(__file__).parents[1] / "benchmarks" / f"{name}.py"
        spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module

    return load
