"""loop online: one on-policy update of the questioner, written by hand.

TRL's GRPOTrainer samples single completions of prompts itself; a conversation with a
roleplayer, scored after the fact, does not fit its rollout. The rounds are built from the
pipeline's own simulate and score stages instead, and this is the update: with the conversations
sampled from this very policy (one update per batch, so the importance ratio is 1 and GRPO's
clipping never acts), the loss over the trained tokens t is

    - sum_t A_t log pi(t)  +  kl_coef * sum_t [exp(r_t) - r_t - 1],   r_t = log pi_ref(t) - log pi(t)

divided by the number of trained tokens: the policy gradient of the advantages A_t
(stages/online.py) and the k3 estimate of KL(pi || pi_ref), pi_ref being Q_BASE. The AdamW state
is saved beside the weights, so the next round (or a resumed run) continues it exactly.

Launched (train.distributed, `accelerate launch`, worker.py) each process takes every n-th
example and the processes sum their gradients before the one step, so n processes take the step
one process would; the main process saves.

With train.lora the update trains LoRA adapters on Q_BASE: the policy folder keeps the adapter
(adapter/, continued round after round) beside the merged model that sampling loads, and the
reference is the same model with its adapter switched off, so no second copy is held.
"""

from __future__ import annotations

from pathlib import Path

from star_gate.config import OnlineConfig, TrainConfig
from star_gate.training.finetune import train_in_bf16

OPTIMIZER_STATE = "optimizer.pt"


def _batches(examples: list[dict], size: int):
    for start in range(0, len(examples), size):
        yield examples[start : start + size]


def _padded(batch: list[dict], pad_id: int):
    """Right-padded tensors: ids, attention mask, weights and trained-token mask."""
    import torch

    width = max(len(e["input_ids"]) for e in batch)

    def pad(key, value):
        return torch.tensor([e[key] + [value] * (width - len(e[key])) for e in batch])

    attention = torch.tensor(
        [[1] * len(e["input_ids"]) + [0] * (width - len(e["input_ids"])) for e in batch]
    )
    return pad("input_ids", pad_id), attention, pad("weights", 0.0).float(), pad("trained", 0)


def token_logprobs(model, ids, attention, autocast: bool):
    """log p(token i | tokens < i) for i >= 1, shape (batch, length - 1)."""
    import torch

    with torch.autocast(ids.device.type, dtype=torch.bfloat16, enabled=autocast):
        logits = model(input_ids=ids, attention_mask=attention).logits[:, :-1]
    return torch.log_softmax(logits.float(), dim=-1).gather(-1, ids[:, 1:, None]).squeeze(-1)


def online_loss(logp, ref_logp, weights, trained, kl_coef: float, tokens: int):
    """The loss of one batch (see the module docstring) and its two parts, summed over tokens."""
    policy = -(weights * logp).sum()
    delta = (ref_logp - logp) * trained
    kl = ((delta.exp() - delta - 1) * trained).sum()
    return (policy + kl_coef * kl) / tokens, policy.detach(), kl.detach()


def _lora_policy(policy_path: str, base_path: str, train: TrainConfig):
    """Q_BASE with the policy's adapter (trainable), or a new adapter in the first round."""
    import torch
    from peft import PeftModel, get_peft_model
    from transformers import AutoModelForCausalLM

    from star_gate.training.finetune import peft_config

    base = AutoModelForCausalLM.from_pretrained(base_path, dtype=torch.float32)
    adapter = Path(policy_path) / "adapter"
    if adapter.is_dir():
        return PeftModel.from_pretrained(base, str(adapter), is_trainable=True)
    return get_peft_model(base, peft_config(train.lora))


def _reference_logprobs(model, ref, ids, attention, autocast: bool):
    if ref is not None:
        return token_logprobs(ref, ids, attention, autocast)
    with model.disable_adapter():  # LoRA: Q_BASE is the policy without its adapter
        return token_logprobs(model, ids, attention, autocast)


def _process_group() -> tuple[int, int]:
    """(rank, world size) of a launched update; (0, 1) in this process."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _sum_over_processes(parameters, policy_sum: float, kl_sum: float, device):
    """Sum the gradients (each process's loss is already over the global token count) and the
    two loss parts over the processes."""
    import torch
    import torch.distributed as dist

    for parameter in parameters:
        if parameter.grad is None:  # no example reached it here: it still joins the sum
            parameter.grad = torch.zeros_like(parameter)
        dist.all_reduce(parameter.grad)
    parts = torch.tensor([policy_sum, kl_sum], device=device, dtype=torch.float64)
    dist.all_reduce(parts)
    return parts[0].item(), parts[1].item()


def policy_update(
    examples: list[dict],
    policy: str,
    reference: str,
    output_dir: Path,
    online: OnlineConfig,
    train: TrainConfig,
    seed: int,
) -> dict:
    """One AdamW step of `policy` on the examples (stages/online.policy_examples), saved with its
    tokenizer and optimizer state to output_dir; returns the loss, the KL per trained token and
    the gradient norm before clipping."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from star_gate.backends.models import resolve_model

    torch.manual_seed(seed)
    rank, world = _process_group()
    device = torch.device(
        f"cuda:{torch.cuda.current_device()}" if torch.cuda.is_available() else "cpu"
    )
    policy_path = resolve_model(policy)
    tokenizer = AutoTokenizer.from_pretrained(policy_path)
    if train.lora.enabled:
        model = _lora_policy(policy_path, resolve_model(reference), train)
        ref = None  # the same model with its adapter off
    else:
        model = AutoModelForCausalLM.from_pretrained(policy_path, dtype=torch.float32)
        ref = AutoModelForCausalLM.from_pretrained(resolve_model(reference), dtype=torch.float32)
        ref.eval().requires_grad_(False).to(device)
    model.to(device)
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=online.learning_rate, weight_decay=0.0)
    state = Path(policy_path) / OPTIMIZER_STATE
    if state.exists():  # the previous round's moments: the update continues them
        optimizer.load_state_dict(torch.load(state, weights_only=True))
    model.train()
    tokens = max(1, sum(sum(e["trained"][1:]) for e in examples))
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    autocast = train_in_bf16(train)
    policy_sum = kl_sum = 0.0
    for batch in _batches(examples[rank::world], train.batch_size):
        ids, attention, weights, trained = (t.to(device) for t in _padded(batch, pad_id))
        logp = token_logprobs(model, ids, attention, autocast)
        with torch.no_grad():
            ref_logp = _reference_logprobs(model, ref, ids, attention, autocast)
        loss, policy_part, kl_part = online_loss(
            logp, ref_logp, weights[:, 1:], trained[:, 1:].float(), online.kl_coef, tokens
        )
        loss.backward()
        policy_sum += policy_part.item()
        kl_sum += kl_part.item()
    if world > 1:
        policy_sum, kl_sum = _sum_over_processes(trainable, policy_sum, kl_sum, device)
    grad_norm = torch.nn.utils.clip_grad_norm_(trainable, online.max_grad_norm).item()
    optimizer.step()
    if rank != 0:  # every process took the same step; the main one saves it
        return {}
    output_dir.mkdir(parents=True, exist_ok=True)
    if train.lora.enabled:
        from star_gate.training.finetune import save_adapter_and_merged

        save_adapter_and_merged(model, output_dir)
    else:
        model.save_pretrained(output_dir)
    tokenizer.save_pretrained(output_dir)
    torch.save(optimizer.state_dict(), output_dir / OPTIMIZER_STATE)
    return {
        "loss": (policy_sum + online.kl_coef * kl_sum) / tokens,
        "kl": kl_sum / tokens,
        "grad_norm": grad_norm,
        "trained_tokens": tokens,
    }
