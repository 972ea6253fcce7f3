"""Batched sampling and scoring that compute a shared prompt prefix once.

Every questioner prompt of a run starts with the same opening (system prompt and few-shot
examples, about 250 tokens), and the n conversations of a pair share their whole first-turn
prompt. Plain `model.generate` prefills all of it again for every row, which on a CPU costs
several times the decoding itself. Here:

- the longest prefix common to every prompt of a call is run through the model once, and its
  keys and values are kept (a few, keyed by token ids) for later calls: the opening is computed
  once per model, not once per conversation and turn;
- identical prompts (n samples of one pair, or `SamplingParams.n`) are prefilled once, and their
  keys and values copied to each sample;
- each row's suffix is left-padded *after* the shared prefix, [prefix | pads | suffix | new
  tokens], with explicit positions and a 4-D mask, so a row computes what it would alone;
- keys and values live in one preallocated buffer per batch (no copy of the whole cache per new
  token), and rows that have stopped are dropped from the batch as it shrinks.

The decoding loop is ours because `generate` cannot start a batch from one shared cache with
per-row suffixes.
"""

from __future__ import annotations

import inspect
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass

import torch

MIN_SHARED = 8  # shorter common prefixes are not worth a separate pass
KEPT_PREFIXES = 4  # prefixes whose keys and values stay cached between calls
NUCLEUS_CANDIDATES = 256  # tokens considered before falling back to a full sort
COMPACT_AT = 4  # drop stopped rows from a batch once they are a quarter of it


def common_prefix_length(rows: Sequence[Sequence[int]]) -> int:
    """Length of the longest prefix every row shares, leaving each row at least one token of its own
    (the position that predicts the first new or scored token)."""
    if not rows:
        return 0
    shortest = min(len(r) for r in rows)
    first = rows[0]
    length = 0
    while length < shortest - 1 and all(r[length] == first[length] for r in rows):
        length += 1
    return length if length >= MIN_SHARED else 0


class KVBuffer:
    """A preallocated key/value cache for one batch: every row writes the same columns each forward.

    It offers the `update` call that transformers' attention layers make on a cache, and returns
    only the filled columns, so attention never reads the unused tail.
    """

    def __init__(self, prefix: list[tuple[torch.Tensor, torch.Tensor]], rows: int, capacity: int):
        self.filled = prefix[0][0].shape[2] if prefix else 0
        self.keys, self.values = [], []
        for keys, values in prefix:
            shape = (rows, keys.shape[1], capacity, keys.shape[3])
            k, v = keys.new_empty(shape), values.new_empty(shape)
            k[:, :, : self.filled] = keys
            v[:, :, : self.filled] = values
            self.keys.append(k)
            self.values.append(v)
        self._pending = 0

    def update(self, key_states, value_states, layer_idx, *args, **kwargs):
        """transformers' Cache hook: this forward's keys and values go after the filled columns."""
        width = key_states.shape[2]
        end = self.filled + width
        self.keys[layer_idx][:, :, self.filled : end] = key_states
        self.values[layer_idx][:, :, self.filled : end] = value_states
        self._pending = width
        return self.keys[layer_idx][:, :, :end], self.values[layer_idx][:, :, :end]

    def advance(self) -> None:
        """Called after each forward: the columns just written are now part of the cache."""
        self.filled += self._pending
        self._pending = 0

    def get_seq_length(self, layer_idx: int = 0) -> int:
        """Columns filled so far (transformers' Cache interface)."""
        return self.filled

    def select(self, rows: torch.Tensor) -> None:
        """Keep (or repeat) these rows, in this order."""
        self.keys = [k.index_select(0, rows) for k in self.keys]
        self.values = [v.index_select(0, rows) for v in self.values]


@dataclass
class Batch:
    """The token-level state of one batch: which cache columns each row may attend to, and the
    position of its next token."""

    visible: torch.Tensor  # [rows, capacity] bool
    next_position: torch.Tensor  # [rows] long

    def mask(self, width: int, filled: int, dtype: torch.dtype) -> torch.Tensor:
        """Additive 4-D mask for `width` new tokens written after `filled` columns: each new token
        sees the visible columns before it and the row's own new tokens up to itself."""
        end = filled + width
        seen = self.visible[:, None, :end].expand(-1, width, -1).clone()
        causal = torch.ones(width, width, dtype=torch.bool, device=seen.device).tril()
        seen[:, :, filled:end] &= causal
        mask = torch.zeros(seen.shape, dtype=dtype, device=seen.device)
        mask.masked_fill_(~seen, torch.finfo(dtype).min)
        return mask[:, None]

    def select(self, rows: torch.Tensor) -> None:
        """Keep only these rows (those still generating)."""
        self.visible = self.visible.index_select(0, rows)
        self.next_position = self.next_position.index_select(0, rows)


def nucleus_sample(
    probs: torch.Tensor, top_p: float, generator: torch.Generator | None
) -> torch.Tensor:
    """One token per row from the smallest set of most likely tokens whose mass reaches top_p.

    Sorting the whole vocabulary every step costs as much as the forward pass of a small model
    on a CPU; the nucleus almost always lies within the top few hundred tokens, so those are
    found with topk, and only the rows whose nucleus is wider are sorted in full. Narrow rows draw
    first, then wide ones, each from the same generator: reproducible for a seed.
    """
    if top_p >= 1.0:  # the whole vocabulary: nothing to cut
        return torch.multinomial(probs, 1, generator=generator).squeeze(-1)
    width = min(NUCLEUS_CANDIDATES, probs.shape[-1])
    top, index = probs.topk(width, dim=-1)
    tokens = _draw_from_nucleus(top, index, top_p, generator)
    wide = (top.sum(-1) < top_p).nonzero().squeeze(-1)
    if wide.numel():
        # Drawing again for the few wide rows is cheaper than sorting and drawing over all rows.
        top, index = probs.index_select(0, wide).sort(dim=-1, descending=True)
        tokens[wide] = _draw_from_nucleus(top, index, top_p, generator)
    return tokens


def _draw_from_nucleus(
    top: torch.Tensor, index: torch.Tensor, top_p: float, generator: torch.Generator | None
) -> torch.Tensor:
    """One token per row from candidates sorted by falling probability (`index` maps them back
    to the vocabulary), cut where the mass before a candidate reaches top_p."""
    mass_before = top.cumsum(-1) - top
    kept = top.masked_fill(mass_before >= top_p, 0.0)  # the first token always stays
    choice = torch.multinomial(kept, 1, generator=generator)
    return index.gather(-1, choice).squeeze(-1)


class SharedPrefixRunner:
    """Sampling and scoring for one causal LM, with shared-prefix caching (see module docstring)."""

    def __init__(self, model, pad_id: int):
        self.model = model
        self.pad_id = pad_id
        # transformers 5 renamed the forward's `past_key_values` to `cache` (the old name warns).
        self.cache_arg = (
            "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"
        )
        self._prefixes: OrderedDict[tuple[int, ...], list[tuple[torch.Tensor, torch.Tensor]]] = (
            OrderedDict()
        )

    @property
    def device(self):
        """Where the model's weights are."""
        return self.model.device

    # -- the shared prefix -------------------------------------------------------------------
    def prefix_cache(self, ids: Sequence[int]) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Keys and values of `ids` run alone (batch 1), per layer; computed once while kept."""
        key = tuple(ids)
        if key in self._prefixes:
            self._prefixes.move_to_end(key)
            return self._prefixes[key]
        layers = self._empty_layers()
        if ids:
            buffer = KVBuffer(layers, 1, len(ids))
            tokens = torch.tensor([list(ids)], device=self.device)
            state = Batch(
                torch.ones(1, len(ids), dtype=torch.bool, device=self.device),
                torch.zeros(1, dtype=torch.long, device=self.device),
            )
            self._forward(tokens, buffer, state, keep=1)
            layers = [(k, v) for k, v in zip(buffer.keys, buffer.values)]
        self._prefixes[key] = layers
        if len(self._prefixes) > KEPT_PREFIXES:
            self._prefixes.popitem(last=False)
        return layers

    def _empty_layers(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        config = (
            self.model.config.get_text_config()
            if hasattr(self.model.config, "get_text_config")
            else self.model.config
        )
        heads = getattr(config, "num_key_value_heads", None) or config.num_attention_heads
        head_dim = (
            getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
        )
        dtype = next(self.model.parameters()).dtype
        empty = torch.empty(1, heads, 0, head_dim, dtype=dtype, device=self.device)
        return [(empty, empty) for _ in range(config.num_hidden_layers)]

    def _forward(
        self, tokens: torch.Tensor, buffer: KVBuffer, state: Batch, keep: int
    ) -> torch.Tensor:
        """Run `tokens` [rows, width] after the buffer's filled columns; the last `keep` columns' logits.

        Real (non-pad) tokens become visible to later tokens; positions follow each row's own count.
        """
        width = tokens.shape[1]
        real = state.visible[:, buffer.filled : buffer.filled + width]
        positions = state.next_position[:, None] + (real.long().cumsum(-1) - 1).clamp(min=0)
        mask = state.mask(width, buffer.filled, next(self.model.parameters()).dtype)
        out = self.model(
            input_ids=tokens,
            attention_mask=mask,
            position_ids=positions,
            use_cache=True,
            logits_to_keep=keep,
            **{self.cache_arg: buffer},
        )
        buffer.advance()
        state.next_position = state.next_position + real.long().sum(-1)
        return out.logits

    def _start(
        self, prefix, suffixes: list[list[int]], capacity_after: int
    ) -> tuple[KVBuffer, Batch, int]:
        """A buffer holding the prefix for each suffix row, with room for the left-padded suffixes
        and `capacity_after` more columns."""
        shared = prefix[0][0].shape[2]
        width = max(len(s) for s in suffixes)
        capacity = shared + width + capacity_after
        buffer = KVBuffer(prefix, len(suffixes), capacity)
        visible = torch.zeros(len(suffixes), capacity, dtype=torch.bool, device=self.device)
        visible[:, :shared] = True
        for row, suffix in enumerate(suffixes):
            visible[row, shared + width - len(suffix) : shared + width] = True
        state = Batch(
            visible, torch.full((len(suffixes),), shared, dtype=torch.long, device=self.device)
        )
        return buffer, state, width

    def _padded(self, rows: list[list[int]], width: int) -> torch.Tensor:
        return torch.tensor(
            [[self.pad_id] * (width - len(r)) + r for r in rows], device=self.device
        )

    # -- sampling ------------------------------------------------------------------------------
    @torch.inference_mode()
    def sample(
        self,
        prefix: list[int],
        suffixes: list[list[int]],
        samples: list[int],
        max_new_tokens: int,
        stop_ids: list[int],
        sampling: tuple[float, float] | None,
        generator: torch.Generator | None,
    ) -> list[list[list[int]]]:
        """New token ids for `samples[i]` samples of each prompt prefix + suffixes[i], all in one batch.

        sampling: (temperature, top_p), or None for greedy decoding.
        Each list of ids ends at (and includes) its first stop id, or at max_new_tokens.
        """
        cache = self.prefix_cache(prefix)
        buffer, state, width = self._start(cache, suffixes, max_new_tokens)
        logits = self._forward(self._padded(suffixes, width), buffer, state, keep=1)[:, -1]
        # Each prompt was prefilled once; now copy its state to every sample drawn from it.
        owner = torch.repeat_interleave(
            torch.arange(len(suffixes), device=self.device),
            torch.tensor(samples, device=self.device),
        )
        buffer.select(owner)
        state.select(owner)
        logits = logits.index_select(0, owner)
        rows = owner.tolist()
        outputs: list[list[int]] = [[] for _ in rows]
        live = list(range(len(rows)))  # output index of each row still in the batch
        done = torch.zeros(len(rows), dtype=torch.bool, device=self.device)
        stop = torch.tensor(stop_ids, device=self.device)
        for step in range(max_new_tokens):
            tokens = self._pick(logits, sampling, generator)
            for row, token, finished in zip(live, tokens.tolist(), done.tolist()):
                if not finished:
                    outputs[row].append(token)
            done |= torch.isin(tokens, stop)
            if step == max_new_tokens - 1 or bool(done.all()):
                break
            if int(done.sum()) * COMPACT_AT >= len(live):
                # Copying the cache costs about one step, so stopped rows are dropped in bulk.
                keep = (~done).nonzero().squeeze(-1)
                live = [live[i] for i in keep.tolist()]
                tokens, done = tokens.index_select(0, keep), done.index_select(0, keep)
                buffer.select(keep)
                state.select(keep)
            state.visible[:, buffer.filled] = True
            logits = self._forward(tokens[:, None], buffer, state, keep=1)[:, -1]
        grouped: list[list[list[int]]] = [[] for _ in suffixes]
        for row, prompt in enumerate(rows):
            grouped[prompt].append(outputs[row])
        return grouped

    @staticmethod
    def _pick(
        logits: torch.Tensor, sampling: tuple[float, float] | None, generator
    ) -> torch.Tensor:
        """The next token of each row: greedy when sampling is None, else nucleus sampling at
        (temperature, top_p) with the generator."""
        if sampling is None:
            return logits.argmax(-1)
        temperature, top_p = sampling
        probs = torch.softmax(logits.float() / temperature, dim=-1)
        return nucleus_sample(probs, top_p, generator)

    # -- scoring -------------------------------------------------------------------------------
    @torch.inference_mode()
    def score(
        self, prefix: list[int], suffixes: list[list[int]], targets: list[list[int]]
    ) -> list[list[float]]:
        """log p(target token | prefix, suffix, earlier target tokens) for each row, per token.

        Rows with the same suffix (a judge's 'A' and 'B', or several gold answers after one control
        prompt) run that suffix once: all of it but its last token goes through the model once, and
        each row continues from there with [last token] + its target.
        """
        longest = max(len(t) for t in targets)
        if longest == 0:
            return [[] for _ in targets]
        cache = self.prefix_cache(prefix)
        heads: dict[tuple[int, ...], int] = {}
        owner = [heads.setdefault(tuple(s[:-1]), len(heads)) for s in suffixes]
        if len(heads) == len(suffixes):  # nothing to share: one pass over suffix + target
            rows = [s + t for s, t in zip(suffixes, targets)]
            buffer, state, width = self._start(cache, rows, 0)
        else:
            rows = [s[-1:] + t for s, t in zip(suffixes, targets)]
            width = max(len(r) for r in rows)
            buffer, state, head_width = self._start(cache, [list(h) for h in heads], width)
            if head_width:
                self._forward(
                    self._padded([list(h) for h in heads], head_width), buffer, state, keep=1
                )
            index = torch.tensor(owner, device=self.device)
            buffer.select(index)
            state.select(index)
            for row, tail in enumerate(rows):
                state.visible[row, buffer.filled + width - len(tail) : buffer.filled + width] = True
        tokens = self._padded(rows, width)
        logits = self._forward(tokens, buffer, state, keep=longest + 1)[:, :-1].float()
        # log p(token) = logit(token) - logsumexp(logits), the logsumexp written out in place:
        # torch.logsumexp makes a temporary as large as the logits (0.4 GB at a full batch; the
        # demo peaked there, at 4.2 GB), and in place it is also twice as fast, with equal values.
        picked = logits.gather(-1, tokens[:, -longest:].unsqueeze(-1)).squeeze(-1)
        largest = logits.amax(dim=-1, keepdim=True)
        normalizer = logits.sub_(largest).exp_().sum(dim=-1).log_() + largest.squeeze(-1)
        token_logp = (picked - normalizer).tolist()
        return [row[longest - len(t) :] if t else [] for row, t in zip(token_logp, targets)]
