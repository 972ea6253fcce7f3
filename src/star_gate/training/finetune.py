"""Fine-tune the base model on training examples with TRL: SFT (the paper's objective) or DPO
(dpo.py), all weights or LoRA adapters, in this process or in each launched process (worker.py).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from star_gate.config import LoraConfig, TrainConfig


def finetune(
    examples: list[dict],
    base_model: str,
    output_dir: Path,
    cfg: TrainConfig,
    seed: int,
    ddp_backend: str | None = None,
    log_dir: Path | None = None,
) -> dict:
    """Fine-tune base_model (always from its initial weights) with TRL: SFTTrainer on examples from
    stages/train.build_examples, or (cfg.objective dpo) DPOTrainer on examples from
    stages/preference.build_preference_examples; all weights, or LoRA adapters when cfg.lora.enabled.

    Saves a standard Hugging Face checkpoint (model + tokenizer) to output_dir, with LoRA adapters
    merged in so that it loads like any other; the adapters alone go to output_dir/adapter.
    Returns the training metrics.

    Runs in this process, or in each process of a launched training (worker.py), where
    ddp_backend names the torch.distributed backend when accelerate's choice is not wanted.
    With cfg.report_to, the trainer logs its curves under log_dir (training/tracking.py).
    """
    from star_gate.training.tracking import trainer_logging

    with trainer_logging(cfg.report_to, log_dir) as report_to:
        return _finetune(examples, base_model, output_dir, cfg, seed, ddp_backend, report_to)


def train_in_bf16(cfg: TrainConfig) -> bool:
    """train.bf16, or where it is unset, whether the device training runs on has bf16 natively."""
    if cfg.bf16 is not None:
        return cfg.bf16
    import torch

    from star_gate.backends.hf import native_bf16

    return native_bf16("cuda" if torch.cuda.is_available() else "cpu")


def _finetune(examples, base_model, output_dir, cfg, seed, ddp_backend, report_to) -> dict:
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from star_gate.backends.models import resolve_model

    path = resolve_model(base_model)
    tokenizer = AutoTokenizer.from_pretrained(path)
    dataset = Dataset.from_list(examples)
    eval_dataset = None
    held_out = int(len(examples) * cfg.validation_fraction)
    if held_out >= 1:
        split = dataset.train_test_split(test_size=held_out, seed=seed)
        dataset, eval_dataset = split["train"], split["test"]
    use_bf16 = train_in_bf16(cfg)
    common = {
        "output_dir": str(output_dir / "trainer"),
        "learning_rate": cfg.learning_rate,
        "num_train_epochs": cfg.epochs,
        "per_device_train_batch_size": cfg.batch_size,
        "per_device_eval_batch_size": cfg.batch_size,
        "gradient_accumulation_steps": cfg.gradient_accumulation,
        "lr_scheduler_type": cfg.scheduler,
        "warmup_steps": float(cfg.warmup_ratio),  # a float in [0, 1) is a ratio of total steps
        "bf16": use_bf16,
        "use_cpu": use_bf16 and not torch.cuda.is_available(),  # bf16 on a CPU must be asked for
        "gradient_checkpointing": cfg.gradient_checkpointing,
        "logging_steps": 1,
        "save_strategy": "no",
        "eval_strategy": "epoch" if eval_dataset is not None else "no",
        "report_to": report_to,
        "seed": seed,
        "max_length": None,  # already truncated by the example builders, keeping the loss-bearing end
        "disable_tqdm": True,
        "ddp_backend": ddp_backend,
    }
    trainer_kwargs = {
        "train_dataset": dataset,
        "eval_dataset": eval_dataset,
        "processing_class": tokenizer,
        "peft_config": peft_config(cfg.lora) if cfg.lora.enabled else None,
        "callbacks": [heap_trimming_callback()],
    }
    from trl import SFTConfig, SFTTrainer

    dpo = cfg.objective == "dpo"
    # One example per batch has no padding to remove (and TRL warns that packing it gains nothing).
    padding_free = cfg.padding_free and cfg.batch_size > 1
    args = _dpo_args(cfg, common) if dpo else SFTConfig(**common, padding_free=padding_free)
    # Loaded after the arguments, which tell transformers whether DeepSpeed ZeRO-3 is on: then
    # each process loads only its shard of the weights.
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    if dpo:
        trainer = _dpo_trainer(cfg, model, args, trainer_kwargs)
    else:
        trainer = SFTTrainer(model=model, args=args, **trainer_kwargs)
    trainable = _trainable_params(trainer.model)  # before training wraps or shards the model
    result = trainer.train()
    metrics = {
        "train_loss": result.training_loss,
        "steps": result.global_step,
        "examples": len(dataset),
        "train_seconds": result.metrics.get("train_runtime"),
    }
    if cfg.objective == "dpo":
        metrics.update(
            _last_epoch_means(trainer.state.log_history, ("rewards/accuracies", "rewards/margins"))
        )
    if eval_dataset is not None:
        metrics["eval_loss"] = trainer.evaluate()["eval_loss"]
    metrics["trainable_params"] = trainable
    _save(trainer, tokenizer, path, output_dir, cfg.lora.enabled)
    return metrics


def heap_trimming_callback():
    """A trainer callback that gives the heap's free pages back after every optimizer step:
    examples of different lengths leave freed blocks of every size, and without this the
    demo's training grew by 1 to 2 GB over three epochs (memory.py)."""
    from transformers import TrainerCallback

    from star_gate.memory import trim_heap

    class TrimHeapEachStep(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            trim_heap()

    return TrimHeapEachStep()


def _dpo_args(cfg: TrainConfig, common: dict):
    from trl import DPOConfig

    weight = cfg.dpo.sft_weight
    args = DPOConfig(
        **common,
        beta=cfg.dpo.beta,
        loss_type=["sigmoid", "sft"] if weight else ["sigmoid"],
        loss_weights=[1.0, weight] if weight else None,
        # One pass of the reference over the data before training, instead of a second model
        # beside the policy at every step. Several processes would each cache it in a private
        # temporary file (the examples are in memory), so they keep the reference model instead.
        precompute_ref_log_probs=True,
    )
    if args.world_size > 1:
        args.precompute_ref_log_probs = False
    return args


def _dpo_trainer(cfg: TrainConfig, model, args, trainer_kwargs: dict):
    import torch
    from transformers import AutoModelForCausalLM

    from star_gate.backends.models import resolve_model
    from star_gate.training.dpo import PreferenceCollator, masked_dpo_trainer

    reference = None
    if cfg.dpo.reference:
        reference = AutoModelForCausalLM.from_pretrained(
            resolve_model(cfg.dpo.reference), dtype=torch.float32
        )
    tokenizer = trainer_kwargs["processing_class"]
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    return masked_dpo_trainer(
        model=model,
        ref_model=reference,
        args=args,
        data_collator=PreferenceCollator(pad),
        **trainer_kwargs,
    )


def _last_epoch_means(log_history: list[dict], names: Sequence[str]) -> dict:
    """Each logged training metric averaged over the last epoch's steps."""
    logged = [entry for entry in log_history if names[0] in entry and "epoch" in entry]
    if not logged:
        return {}
    last_epoch = max(entry["epoch"] for entry in logged)
    final = [entry for entry in logged if entry["epoch"] > last_epoch - 1]
    return {
        name.replace("rewards/", "preference_"): sum(e[name] for e in final) / len(final)
        for name in names
    }


def _trainable_params(model) -> int:
    if hasattr(model, "get_nb_trainable_parameters"):  # a PEFT model
        return model.get_nb_trainable_parameters()[0]
    # DeepSpeed ZeRO-3 partitions weights as they load: ds_numel is a weight's full size.
    return sum(getattr(p, "ds_numel", p.numel()) for p in model.parameters() if p.requires_grad)


def _save(trainer, tokenizer, base_path: str, output_dir: Path, lora: bool) -> None:
    """Save a standard checkpoint from one process or from many (worker.py).

    Every process calls this: under FSDP and DeepSpeed ZeRO-3 each holds a shard of the weights,
    and save_model gathers them for the main process, the only one that writes.
    """
    from accelerate.utils import DistributedType

    accelerator = trainer.accelerator
    in_process = accelerator.distributed_type == DistributedType.NO
    if trainer.is_fsdp_enabled:
        # FSDP's default sharded state dict would make save_model write nothing usable here.
        accelerator.state.fsdp_plugin.set_state_dict_type("FULL_STATE_DICT")
    if not lora:
        trainer.save_model(str(output_dir))
    elif in_process:
        save_adapter_and_merged(trainer.model, output_dir)
    else:
        # A sharded or wrapped PEFT model cannot be merged in place: save the gathered adapters,
        # then merge them into a fresh copy of the base model on the main process.
        trainer.save_model(str(output_dir / "adapter"))
        if accelerator.is_main_process:
            _merge_saved_adapter(base_path, output_dir)
    if accelerator.is_main_process:
        tokenizer.save_pretrained(str(output_dir))
    accelerator.wait_for_everyone()  # no process leaves before the checkpoint is whole


def peft_config(lora: LoraConfig):
    from peft import LoraConfig as PeftLoraConfig

    return PeftLoraConfig(
        task_type="CAUSAL_LM",
        r=lora.r,
        lora_alpha=lora.alpha,
        lora_dropout=lora.dropout,
        target_modules=lora.target_modules,
    )


def save_adapter_and_merged(peft_model, output_dir: Path) -> None:
    # The adapter is kept for inspection or reuse; the merged model is what the pipeline loads, so
    # later stages need neither PEFT nor the adapter. Not under output_dir/trainer: that is deleted.
    peft_model.save_pretrained(str(output_dir / "adapter"))
    peft_model.merge_and_unload().save_pretrained(str(output_dir))


def _merge_saved_adapter(base_path: str, output_dir: Path) -> None:
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM
    from transformers.integrations.deepspeed import unset_hf_deepspeed_config

    # Only the main process loads this copy: under ZeRO-3 the load would wait for the others to
    # load their shards, forever. Training is over, so ZeRO-3 is switched off for good.
    unset_hf_deepspeed_config()
    base = AutoModelForCausalLM.from_pretrained(base_path, dtype=torch.float32)
    PeftModel.from_pretrained(base, str(output_dir / "adapter")).merge_and_unload().save_pretrained(
        str(output_dir)
    )
