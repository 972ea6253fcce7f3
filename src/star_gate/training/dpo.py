"""DPO on (chosen, rejected) conversations of one (task, persona), with the SFT loss mask.

TRL's DPOTrainer computes its loss over the tokens its collator marks in `completion_mask`, but
its own tokenization marks everything after a shared prompt, which would train the roleplayer's
answers too. Here each conversation arrives tokenized with the mask of stages/train.py (the
questioner's turns and the final answer), a collator passes that mask to TRL as the completion
mask, and TRL does the rest: the reference log-probs, the sigmoid loss, an optional NLL term on
the chosen conversation, LoRA and distributed training.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class PreferenceCollator:
    """Pads a batch into TRL's DPO layout: the chosen sequences, then the rejected ones, with the
    loss mask as `completion_mask` (and the precomputed reference log-probs, once TRL added them)."""

    pad_token_id: int

    def __call__(self, examples: list[dict]) -> dict:
        import torch

        sequences = [e["chosen_ids"] for e in examples] + [e["rejected_ids"] for e in examples]
        masks = [e["chosen_mask"] for e in examples] + [e["rejected_mask"] for e in examples]
        width = max(map(len, sequences))
        batch = {
            "input_ids": torch.tensor(
                [s + [self.pad_token_id] * (width - len(s)) for s in sequences]
            ),
            "attention_mask": torch.tensor(
                [[1] * len(s) + [0] * (width - len(s)) for s in sequences]
            ),
            "completion_mask": torch.tensor([m + [0] * (width - len(m)) for m in masks]),
        }
        for side in ("chosen", "rejected"):
            if f"ref_{side}_logps" in examples[0]:
                batch[f"ref_{side}_logps"] = torch.tensor(
                    [e[f"ref_{side}_logps"] for e in examples]
                )
        return batch


PREFERENCE_COLUMNS = [
    "chosen_ids",
    "chosen_mask",
    "rejected_ids",
    "rejected_mask",
    "ref_chosen_logps",
    "ref_rejected_logps",
]


def masked_dpo_trainer(**kwargs):
    """TRL's DPOTrainer over examples from build_preference_examples (keyword arguments as its)."""
    from trl import DPOTrainer

    class MaskedDPOTrainer(DPOTrainer):
        """DPOTrainer that takes examples tokenized with their loss masks."""

        def _prepare_dataset(self, dataset, *args, **kwargs):
            return dataset  # tokenized, with loss masks, by build_preference_examples

        def _set_signature_columns_if_needed(self):
            self._signature_columns = PREFERENCE_COLUMNS

    return MaskedDPOTrainer(**kwargs)
