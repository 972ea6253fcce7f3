"""Launched training (train.distributed): `accelerate launch` worker processes, here 2 CPU processes
over gloo on the tiny model.

Two processes at batch b must train exactly as one process at batch 2b: same data in each update,
gradients summed over both. The comparisons allow float rounding only (measured: 6e-8 against
updates of 2e-3), so a run that used one process's gradients, or whose processes trained on
their own shares without syncing, fails them. DDP and DeepSpeed (ZeRO-2 and ZeRO-3, when
deepspeed is installed) run here; accelerate runs FSDP only on GPUs, so fsdp.yaml is only read.
Each launch costs 10 to 30 seconds, most of it the workers importing torch and transformers.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading
import time
from importlib.util import find_spec
from pathlib import Path

import pytest
import torch
import yaml
from typer.testing import CliRunner

from star_gate.cli import app
from star_gate.config import ConfigError, DistributedConfig, LoraConfig, TrainConfig
from star_gate.training import launch as train_launch
from star_gate.training.finetune import finetune
from star_gate.training.launch import (
    accelerate_args,
    finetune_launched,
    join_command,
    read_accelerate_config,
)

ACCELERATE_CONFIGS = Path(__file__).resolve().parents[2] / "configs" / "accelerate"
CPU_2PROC = ACCELERATE_CONFIGS / "cpu_2proc.yaml"
ROUNDING = 1e-6  # largest weight difference float rounding may explain
TINY_LORA = LoraConfig(enabled=True, r=2, alpha=4, dropout=0.0)  # r=2: the tiny model is 32 wide

needs_deepspeed = pytest.mark.skipif(
    find_spec("deepspeed") is None, reason="deepspeed is not installed"
)
needs_no_gpu = pytest.mark.skipif(
    torch.cuda.is_available(), reason="checks what happens on a machine without GPUs"
)


@pytest.fixture(scope="module")
def examples(tiny_tokenizer) -> list[dict]:
    """8 different sequences of different lengths, with loss on the second half of each."""
    generator = torch.Generator().manual_seed(0)
    rows = []
    for index in range(8):
        length = 20 + 5 * index
        ids = torch.randint(3, len(tiny_tokenizer), (length,), generator=generator).tolist()
        rows.append(
            {
                "input_ids": ids,
                "assistant_masks": [0] * (length // 2) + [1] * (length - length // 2),
            }
        )
    return rows


def train_config(
    batch_size: int, accelerate_config: Path | None = None, lora: bool = False
) -> TrainConfig:
    """Two updates over the 8 examples at a global batch of 4, at a constant rate."""
    distributed = (
        DistributedConfig(launcher="accelerate", accelerate_config=str(accelerate_config))
        if accelerate_config
        else DistributedConfig()
    )
    return TrainConfig(
        learning_rate=1e-3,
        epochs=1,
        batch_size=batch_size,
        scheduler="constant",
        warmup_ratio=0.0,
        validation_fraction=0.0,
        bf16=False,
        lora=TINY_LORA if lora else LoraConfig(),
        distributed=distributed,
    )


def cpu_variant(folder: Path, name: str, **changes) -> Path:
    """A shipped accelerate config with 2 processes and the given changes, written to folder."""
    tree = yaml.safe_load((ACCELERATE_CONFIGS / name).read_text())
    tree.update(num_processes=2, **changes)
    path = folder / name
    path.write_text(yaml.safe_dump(tree))
    return path


def weights(folder: Path) -> dict[str, torch.Tensor]:
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).state_dict()


def largest_difference(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys()
    return max((a[name] - b[name]).abs().max().item() for name in a)


@pytest.fixture(scope="module")
def one_process(examples, tiny_dir, tmp_path_factory):
    """The reference: in-process training at batch 4 (metrics, weights)."""
    out = tmp_path_factory.mktemp("one") / "checkpoint"
    return finetune(examples, str(tiny_dir), out, train_config(4), seed=0), weights(out)


@pytest.fixture(scope="module")
def one_process_lora(examples, tiny_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("one-lora") / "checkpoint"
    return finetune(examples, str(tiny_dir), out, train_config(4, lora=True), seed=0), weights(out)


def assert_trained_like(
    launched: tuple[dict, Path], reference: tuple[dict, dict], tiny_dir: Path
) -> None:
    """Same updates as the reference, a standard checkpoint, and nothing left of the launch."""
    (metrics, out), (expected_metrics, expected_weights) = launched, reference
    assert metrics["processes"] == 2
    assert metrics["steps"] == expected_metrics["steps"] == 2 and metrics["examples"] == 8
    assert metrics["train_loss"] == pytest.approx(expected_metrics["train_loss"], rel=1e-5)
    assert metrics["trainable_params"] == expected_metrics["trainable_params"]
    tuned = weights(out)
    assert (
        largest_difference(tuned, weights(tiny_dir)) > 1e-4
    )  # it trained: Adam moves weights by about lr
    assert largest_difference(tuned, expected_weights) < ROUNDING
    assert not (out / "launch").exists()
    from transformers import AutoTokenizer

    assert (
        AutoTokenizer.from_pretrained(out).chat_template
        == AutoTokenizer.from_pretrained(tiny_dir).chat_template
    )


# -- DDP -------------------------------------------------------------------------------------------


def test_two_processes_train_like_one_at_the_same_global_batch(
    examples, tiny_dir, one_process, tmp_path
):
    out = tmp_path / "checkpoint"
    metrics = finetune_launched(examples, str(tiny_dir), out, train_config(2, CPU_2PROC), seed=0)
    assert metrics["distributed_type"] == "MULTI_CPU"
    assert_trained_like((metrics, out), one_process, tiny_dir)
    # The tolerance can tell a different grouping of the same data apart: one process at batch 2,
    # i.e. each process's share applied as an update of its own.
    finetune(examples, str(tiny_dir), tmp_path / "halves", train_config(2), seed=0)
    assert largest_difference(weights(tmp_path / "halves"), one_process[1]) > 100 * ROUNDING


def test_dpo_in_two_processes_trains_like_one(examples, tiny_dir, tmp_path):
    """The launched DPO keeps the reference model beside the policy; in-process DPO precomputes the
    reference log-probs: the same reference either way, so the same losses step after step."""
    pairs = [
        {
            "chosen_ids": a["input_ids"],
            "chosen_mask": a["assistant_masks"],
            "rejected_ids": b["input_ids"],
            "rejected_mask": b["assistant_masks"],
        }
        for a, b in zip(examples, examples[1:] + examples[:1])
    ]

    def dpo(batch_size, accelerate_config=None):
        return train_config(batch_size, accelerate_config).model_copy(update={"objective": "dpo"})

    expected = finetune(pairs, str(tiny_dir), tmp_path / "one", dpo(4), seed=0)
    out = tmp_path / "checkpoint"
    metrics = finetune_launched(pairs, str(tiny_dir), out, dpo(2, CPU_2PROC), seed=0)
    assert metrics["processes"] == 2 and metrics["steps"] == expected["steps"] == 2
    # The second step's loss follows from the first update: a process updating alone would move it.
    assert metrics["train_loss"] == pytest.approx(expected["train_loss"], rel=1e-5)
    assert metrics["preference_margins"] == pytest.approx(expected["preference_margins"], rel=1e-4)
    # Weights are not compared to rounding, as they are for SFT: DPO's first gradients are small
    # (the policy starts at the reference), and Adam's first step turns a component's rounding
    # into up to a learning rate of difference. The same happens in one process at batch 2 x 2.
    assert largest_difference(weights(out), weights(tiny_dir)) > 1e-4
    assert not (out / "launch").exists()


def test_lora_adapters_from_two_processes_are_merged_once(
    examples, tiny_dir, one_process_lora, tmp_path
):
    out = tmp_path / "checkpoint"
    metrics = finetune_launched(
        examples, str(tiny_dir), out, train_config(2, CPU_2PROC, lora=True), seed=0
    )
    assert_trained_like((metrics, out), one_process_lora, tiny_dir)
    assert (out / "adapter" / "adapter_config.json").is_file()
    assert not any("lora" in name for name in weights(out))  # merged: a plain checkpoint


# -- DeepSpeed -------------------------------------------------------------------------------------


@needs_deepspeed
@pytest.mark.parametrize(
    ("config", "stage", "lora"),
    [
        ("deepspeed_zero2.yaml", 2, False),
        ("deepspeed_zero3.yaml", 3, False),
        ("deepspeed_zero3.yaml", 3, True),
    ],
)
def test_deepspeed_trains_like_one_process(
    config, stage, lora, examples, tiny_dir, one_process, one_process_lora, tmp_path
):
    """On CPU processes (gloo, fp32): ZeRO-3's gathered save and its LoRA merge included."""
    out = tmp_path / "checkpoint"
    accelerate_config = cpu_variant(tmp_path, config)
    metrics = finetune_launched(
        examples, str(tiny_dir), out, train_config(2, accelerate_config, lora), seed=0
    )
    assert metrics["distributed_type"] == "DEEPSPEED" and metrics["zero_stage"] == stage
    assert_trained_like((metrics, out), one_process_lora if lora else one_process, tiny_dir)


# -- FSDP: GPUs only -------------------------------------------------------------------------------

PLUGIN_PROBE = """
import json
from accelerate.utils import FullyShardedDataParallelPlugin
plugin = FullyShardedDataParallelPlugin()
print("PLUGIN " + json.dumps({
    "version": plugin.fsdp_version, "reshard_after_forward": plugin.reshard_after_forward,
    "wrap": plugin.auto_wrap_policy.__name__, "state_dict": str(plugin.state_dict_type),
}))
"""


def test_fsdp_config_describes_full_sharding_by_block_with_a_full_checkpoint(tmp_path):
    """What the launched workers' FSDP plugin would be (read from the environment accelerate
    launch gives them): the settings train.py relies on to save a standard checkpoint."""
    probe = tmp_path / "probe.py"
    probe.write_text(PLUGIN_PROBE)
    config = ACCELERATE_CONFIGS / "fsdp.yaml"
    command = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--config_file",
        str(config),
        "--num_processes",
        "1",
        str(probe),
    ]
    output = subprocess.run(command, capture_output=True, text=True, timeout=120, check=True).stdout
    plugin = json.loads(
        next(line for line in output.splitlines() if line.startswith("PLUGIN "))[7:]
    )
    assert plugin == {
        "version": 2,
        "reshard_after_forward": True,
        "wrap": "transformer_auto_wrap_policy",
        "state_dict": "StateDictType.FULL_STATE_DICT",
    }


@needs_no_gpu
def test_processes_that_form_no_training_group_are_refused(examples, tiny_dir, tmp_path):
    """fsdp.yaml without GPUs: accelerate would let each process train alone. The workers refuse
    before loading the model, and the error quotes them."""
    out = tmp_path / "checkpoint"
    with pytest.raises(RuntimeError, match="did not form one training group of 2") as failure:
        finetune_launched(
            examples,
            str(tiny_dir),
            out,
            train_config(2, cpu_variant(tmp_path, "fsdp.yaml")),
            seed=0,
        )
    assert "exit status" in str(failure.value)
    assert not (out / "config.json").exists()
    assert "did not form one training group" in (out / "launch" / "workers.log").read_text()


# -- several machines ------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def join_when_asked(launch_dir: Path, machine_rank: int, outcome: dict) -> None:
    """What a user does on another machine: run the join command the pipeline wrote."""
    command_file = launch_dir / "join_command.txt"
    deadline = time.monotonic() + 120
    while not command_file.exists() and time.monotonic() < deadline:
        time.sleep(0.2)
    words = command_file.read_text().split()
    assert words[:2] == ["accelerate", "launch"]
    arguments = [str(machine_rank) if word == "MACHINE_RANK" else word for word in words[2:]]
    command = [sys.executable, "-m", "accelerate.commands.launch", *arguments]
    outcome["joined"] = subprocess.run(
        command, capture_output=True, text=True, timeout=300, check=False
    )


def test_two_machines_on_localhost_train_like_one_process(
    examples, tiny_dir, one_process, tmp_path, capfd
):
    """multi_node.yaml with 1 CPU process per "machine": machine 0 is the pipeline's launch, and
    machine 1 joins with the printed command."""
    accelerate_config = cpu_variant(
        tmp_path,
        "multi_node.yaml",
        use_cpu=True,
        main_process_ip="127.0.0.1",
        main_process_port=free_port(),
    )
    out = tmp_path / "checkpoint"
    outcome: dict = {}
    other = threading.Thread(target=join_when_asked, args=(out / "launch", 1, outcome))
    other.start()
    metrics = finetune_launched(
        examples, str(tiny_dir), out, train_config(2, accelerate_config), seed=0
    )
    other.join()
    assert outcome["joined"].returncode == 0, outcome["joined"].stderr[-2000:]
    assert "waiting for machines 1..1" in capfd.readouterr().err
    assert_trained_like((metrics, out), one_process, tiny_dir)


def test_launch_arguments(tmp_path):
    dist = DistributedConfig(
        launcher="accelerate",
        accelerate_config=str(CPU_2PROC),
        num_processes=16,
        num_machines=2,
        main_process_ip="10.0.0.1",
        main_process_port=29500,
    )
    job = tmp_path / "job.json"
    assert accelerate_args(dist, job, 0) == [
        "--config_file",
        str(CPU_2PROC),
        "--num_processes",
        "16",
        "--num_machines",
        "2",
        "--main_process_ip",
        "10.0.0.1",
        "--main_process_port",
        "29500",
        "--machine_rank",
        "0",
        "-m",
        "star_gate.training.worker",
        str(job),
    ]
    assert "--machine_rank MACHINE_RANK -m star_gate.training.worker" in join_command(dist, job)
    unset = DistributedConfig(launcher="accelerate", accelerate_config=str(CPU_2PROC))
    assert accelerate_args(unset, job, 0)[2:4] == ["--machine_rank", "0"]  # the file's values stand


# -- through the pipeline --------------------------------------------------------------------------


def launched_config(
    fake_config_file, tiny_dir, dataset_dir, folder: Path, epochs: float = 1
) -> Path:
    extra = (
        "iterations: 1\n"
        "train:\n"
        "  batch_size: 2\n"
        f"  epochs: {epochs}\n"
        "  learning_rate: 1.0e-3\n"
        "  warmup_ratio: 0.0\n"  # with one step, any warmup would leave the learning rate at 0
        "  validation_fraction: 0.0\n"
        f"  distributed: {{launcher: accelerate, accelerate_config: {CPU_2PROC}}}\n"
    )
    return fake_config_file(folder, dataset_dir, extra, questioner_model=tiny_dir)


def test_star_gate_run_trains_in_launched_processes(
    fake_config_file, tiny_dir, dataset_dir, tmp_path
):
    config = launched_config(fake_config_file, tiny_dir, dataset_dir, tmp_path)
    result = CliRunner().invoke(app, ["run", str(config)])
    assert result.exit_code == 0, result.output
    stage = json.loads((tmp_path / "run" / "manifest.json").read_text())["stages"]["iter_1/train"]
    assert stage["processes"] == 2 and stage["distributed_type"] == "MULTI_CPU"
    assert stage["steps"] >= 1 and stage["train_loss"] > 0 and stage["examples"] == 4
    checkpoint = tmp_path / "run" / "iter_1" / "checkpoint"
    assert stage["output"] == "iter_1/checkpoint"
    assert sorted(
        p.name for p in checkpoint.parent.iterdir() if p.name.startswith("checkpoint")
    ) == ["checkpoint"]
    assert not (checkpoint / "launch").exists() and not (checkpoint / "trainer").exists()
    assert largest_difference(weights(checkpoint), weights(tiny_dir)) > 1e-4


def processes_naming(text: str) -> list[int]:
    """Live processes whose command line holds text (a zombie's is empty)."""
    found = []
    for entry in Path("/proc").iterdir():
        try:
            command = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:  # not a process, or it ended meanwhile
            continue
        if text in command:
            found.append(int(entry.name))
    return found


def wait_for(condition, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.2)
    return condition()


@pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="workers end with the pipeline on Linux only"
)
def test_killing_the_pipeline_ends_its_training_workers(
    fake_config_file, tiny_dir, dataset_dir, tmp_path
):
    """A worker outliving a killed pipeline would write into the staging folder of the rerun.

    Killed while the workers load (a quiet phase), they end within about 1 s here; without the
    parent-death signal they lived on until their next write to the closed pipe, 11 s later."""
    config = launched_config(fake_config_file, tiny_dir, dataset_dir, tmp_path, epochs=10_000)
    command = [sys.executable, "-c", "from star_gate.cli import main; main()", "run", str(config)]
    pipeline = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    job = str(tmp_path / "run" / "iter_1" / "checkpoint.partial" / "launch" / "job.json")
    try:  # the launcher and both workers name the job on their command lines
        assert wait_for(lambda: len(processes_naming(job)) >= 3, 120), "the workers did not start"
    finally:
        pipeline.kill()
        pipeline.wait()
    assert wait_for(lambda: not processes_naming(job), 6), (
        "training processes outlived the pipeline"
    )


# -- refused before any model loads ----------------------------------------------------------------


@pytest.fixture
def cli_without_models(monkeypatch):
    """invoke(*args) -> result; loading any model or tokenizer fails the test."""
    import transformers

    def no_model(*args, **kwargs):
        raise AssertionError("a model was loaded before the config was checked")

    for auto in (transformers.AutoModelForCausalLM, transformers.AutoTokenizer):
        monkeypatch.setattr(auto, "from_pretrained", no_model)
    monkeypatch.setenv("COLUMNS", "500")  # rich would wrap the message at 80 columns
    runner = CliRunner()
    return lambda *args: runner.invoke(app, [str(a) for a in args])


def refused(result, run_dir: Path) -> str:
    """The one-sentence message of a refusal: exit 2, no traceback, no run directory."""
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output and not run_dir.exists()
    message = result.output.strip()
    assert message.startswith("error:") and message.count("error:") == 1
    return " ".join(message.split())


def test_missing_accelerate_config_is_refused_before_any_model_loads(
    cli_without_models, fake_config_file, dataset_dir, tmp_path
):
    missing = tmp_path / "nowhere.yaml"
    extra = f"train: {{distributed: {{launcher: accelerate, accelerate_config: {missing}}}}}\n"
    config = fake_config_file(tmp_path, dataset_dir, extra)
    for command in ("run", "validate"):
        message = refused(cli_without_models(command, config), tmp_path / "run")
        assert message == f"error: train.distributed.accelerate_config: {missing} not found"


def bad_accelerate_config(folder: Path, text: str) -> Path:
    path = folder / "accelerate.yaml"
    path.write_text(text)
    return path


# (train.distributed as YAML, given the folder; a part of the message)
BAD_LAUNCHES = {
    "launcher without config": (
        lambda folder: "{launcher: accelerate}",
        "launcher 'accelerate' needs accelerate_config",
    ),
    "config without launcher": (
        lambda folder: f"{{accelerate_config: {CPU_2PROC}}}",
        "accelerate_config is set but launcher is 'none'",
    ),
    "typo in the accelerate config": (
        lambda folder: (
            f"{{launcher: accelerate, accelerate_config: {bad_accelerate_config(folder, 'num_procesess: 2')}}}"
        ),
        "is not a valid accelerate config",
    ),
    "FSDP on the CPU": (
        lambda folder: (
            f"{{launcher: accelerate, accelerate_config: {cpu_variant(folder, 'fsdp.yaml', use_cpu=True)}}}"
        ),
        "sets use_cpu, with which accelerate cannot run FSDP",
    ),
    "machines without an address": (
        lambda folder: f"{{launcher: accelerate, accelerate_config: {CPU_2PROC}, num_machines: 2}}",
        "train.distributed.main_process_ip: needed with several machines",
    ),
    "machines without a fixed port": (
        lambda folder: (
            f"{{launcher: accelerate, accelerate_config: {CPU_2PROC}, num_machines: 2, main_process_ip: 10.0.0.1}}"
        ),
        "train.distributed.main_process_port: needed with several machines, and not 0",
    ),
}


@pytest.mark.parametrize("case", list(BAD_LAUNCHES))
def test_launch_that_cannot_start_exits_2(
    case, cli_without_models, fake_config_file, dataset_dir, tmp_path
):
    distributed, expected = BAD_LAUNCHES[case]
    config = fake_config_file(
        tmp_path, dataset_dir, f"train: {{distributed: {distributed(tmp_path)}}}\n"
    )
    assert expected in refused(cli_without_models("run", config), tmp_path / "run")


def test_deepspeed_config_without_deepspeed_is_refused(monkeypatch):
    monkeypatch.setattr(train_launch.importlib.util, "find_spec", lambda name: None)
    dist = DistributedConfig(
        launcher="accelerate", accelerate_config=str(ACCELERATE_CONFIGS / "deepspeed_zero2.yaml")
    )
    with pytest.raises(
        ConfigError, match=r"uses DeepSpeed, which is not installed \(pip install deepspeed\)"
    ):
        read_accelerate_config(dist)


@pytest.mark.parametrize("path", sorted(ACCELERATE_CONFIGS.glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_accelerate_configs_are_read(path):
    if "deepspeed" in path.name and find_spec("deepspeed") is None:
        pytest.skip("deepspeed is not installed")
    dist = DistributedConfig(launcher="accelerate", accelerate_config=str(path))
    cluster = read_accelerate_config(dist)
    assert cluster.num_processes >= 2
    assert path.read_text().startswith("#")  # each explains when to use it


def test_online_update_in_two_processes_steps_like_one(examples, tiny_dir, tmp_path):
    """loop online, launched: each process takes half the examples and the gradients are summed,
    so the one AdamW step (and the KL, after it) is the in-process one."""
    from safetensors.torch import load_file

    from star_gate.config import OnlineConfig
    from star_gate.training.launch import online_update_launched
    from star_gate.training.online import policy_update

    weighted = [
        {
            "input_ids": e["input_ids"],
            "weights": [(-1.0) ** i * m for m in e["assistant_masks"]],
            "trained": e["assistant_masks"],
        }
        for i, e in enumerate(examples)
    ]
    online = OnlineConfig(learning_rate=1e-3, kl_coef=0.1)
    alone = policy_update(
        weighted, str(tiny_dir), str(tiny_dir), tmp_path / "alone", online, train_config(2), 0
    )
    out = tmp_path / "launched"
    launched = online_update_launched(
        weighted, str(tiny_dir), str(tiny_dir), out, online, train_config(2, CPU_2PROC), 0
    )
    assert launched["processes"] == 2
    assert launched["grad_norm"] == pytest.approx(alone["grad_norm"], rel=1e-4)
    assert launched["loss"] == pytest.approx(alone["loss"], rel=1e-4, abs=1e-6)
    one, two = (
        load_file(tmp_path / "alone" / "model.safetensors"),
        load_file(out / "model.safetensors"),
    )
    # Adam's first step moves each weight by about the learning rate (1e-3); summing the gradients
    # in another order leaves differences a hundred times smaller.
    assert max((one[k] - two[k]).abs().max().item() for k in one) < 1e-5
    moved = max(
        (one[k] - load_file(tiny_dir / "model.safetensors")[k]).abs().max().item() for k in one
    )
    assert moved > 5e-4
    assert (out / "optimizer.pt").exists() and not (out / "launch").exists()
