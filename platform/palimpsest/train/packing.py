"""Packing: a micro-batch's examples concatenated into full rows, so no FLOP is spent on padding.

Each example keeps its own position ids (0, 1, ... from its first token), and transformers
turns position ids that restart into a block-diagonal causal mask (sdpa and eager) or
flash-attention's variable-length path (`flash_attention_2`) when no attention mask is
given: no token attends across examples. An example's first token is never labelled (it
is its prompt's), so the last token of one example predicts nothing of the next.

The token losses are scattered back into the padded layout `collate_qa` gives, so a
method sees the same per-example losses (`MicroBatch.token_losses`) either way.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from palimpsest.train.batching import IGNORE_INDEX, TokenizedQA


@dataclass
class Packed:
    input_ids: torch.Tensor  # (R, T): R packed rows of at most `row_tokens` tokens, the last padded
    position_ids: torch.Tensor  # (R, T): each example's own positions; padding continues as one more "example"
    labels: torch.Tensor  # (R, T): answer tokens and eos, IGNORE_INDEX elsewhere (as collate_qa)
    # Where each padded (example, position) predicting a label lives in the packed token losses.
    padded_index: tuple[torch.Tensor, torch.Tensor]  # (example, position) in the padded (B, L-1) layout
    packed_index: tuple[torch.Tensor, torch.Tensor]  # (row, position) in the packed (R, T-1) layout
    padded_shape: tuple[int, int]  # (B, L-1)


def pack_qa(items: list[TokenizedQA], *, pad_id: int, eos_id: int, row_tokens: int) -> Packed:
    """Pack `items` in order into rows of at most `row_tokens` tokens (a longer example gets a row of its own)."""
    rows: list[list[tuple[int, list[int], list[int]]]] = [[]]
    used = 0
    for index, item in enumerate(items):
        if not item.prompt:
            raise ValueError("packing needs a prompt token before each answer (it separates the examples)")
        sequence = list(item.prompt) + list(item.answer) + [eos_id]
        labels = [IGNORE_INDEX] * len(item.prompt) + list(item.answer) + [eos_id]
        if rows[-1] and used + len(sequence) > row_tokens:
            rows.append([])
            used = 0
        rows[-1].append((index, sequence, labels))
        used += len(sequence)
    width = max(sum(len(s) for _, s, _ in row) for row in rows)
    longest = max(len(it.prompt) + len(it.answer) + 1 for it in items)
    input_ids, positions, labels = [], [], []
    padded_example, padded_position, packed_row, packed_position = [], [], [], []
    for r, row in enumerate(rows):
        ids, pos, lab, offset = [], [], [], 0
        for index, sequence, sequence_labels in row:
            ids += sequence
            pos += list(range(len(sequence)))
            lab += sequence_labels
            # Position t of the example predicts its token t + 1 (the padded layout's column t).
            for t in range(len(sequence) - 1):
                padded_example.append(index)
                padded_position.append(t)
                packed_row.append(r)
                packed_position.append(offset + t)
            offset += len(sequence)
        pad = width - len(ids)
        input_ids.append(ids + [pad_id] * pad)
        positions.append(pos + list(range(pad)))
        labels.append(lab + [IGNORE_INDEX] * pad)
    as_long = lambda values: torch.tensor(values, dtype=torch.long)  # noqa: E731
    return Packed(as_long(input_ids), as_long(positions), as_long(labels),
                  (as_long(padded_example), as_long(padded_position)), (as_long(packed_row), as_long(packed_position)),
                  (len(items), longest - 1))


def unpack(values: torch.Tensor, packed: Packed) -> torch.Tensor:
    """Packed per-token values (R, T-1) in the padded layout (B, L-1), zero where the padded one has none."""
    out = values.new_zeros(packed.padded_shape)
    out[packed.padded_index] = values[packed.packed_index]  # an index_put: gradients flow back to `values`
    return out
