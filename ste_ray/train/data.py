"""Chat examples → token ids and labels, with the loss on the assistant's tokens only.

The model's own chat template renders the conversation; each assistant turn's text is what the
template adds after the generation prompt of the messages before it (its content and its end
token). Everything else (the system prompt, the tools, the query, an observation) gets the label
-100 and costs no loss. An example longer than ``max_seq_len`` is dropped and counted, never cut.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

import numpy as np
import pyarrow as pa

IGNORE = -100


def tokenize_chat(tokenizer, messages: list[dict[str, str]]) -> tuple[list[int], list[int]]:
    """Token ids of the whole conversation, and labels that are -100 outside assistant turns."""
    ids: list[int] = []
    labels: list[int] = []
    rendered = ""
    for i, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        prompt = tokenizer.apply_chat_template(messages[:i], tokenize=False, add_generation_prompt=True)
        through = tokenizer.apply_chat_template(messages[:i + 1], tokenize=False)
        if not prompt.startswith(rendered) or not through.startswith(prompt):
            raise ValueError("the chat template does not render conversations prefix by prefix; cannot mask the prompt")
        context = tokenizer(prompt[len(rendered):], add_special_tokens=False)["input_ids"]
        target = tokenizer(through[len(prompt):], add_special_tokens=False)["input_ids"]
        ids += context + target
        labels += [IGNORE] * len(context) + target
        rendered = through
    return ids, labels


def load_tokenizer(tokenizer_dir: str, toolkens: Iterable[str] = ()):
    """The model's tokenizer, with each toolken added as one new token. Not a special token: vLLM
    leaves special tokens out of the text it answers with, and the toolken is the API's name."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    if toolkens:
        tokenizer.add_tokens(list(toolkens), special_tokens=False)
    return tokenizer


class Tokenize:
    """A Ray Data UDF (an instance, mapped in tasks: the tokenizer travels with it): SFT rows →
    ``input_ids``, ``labels`` (and ``too_long``, kept for counting)."""

    def __init__(self, tokenizer_dir: str, max_seq_len: int, toolkens: Iterable[str] = ()):
        self.tokenizer = load_tokenizer(tokenizer_dir, toolkens)
        self.max_seq_len = max_seq_len

    def __call__(self, batch: pa.Table) -> pa.Table:
        ids, labels, too_long = [], [], []
        for text in batch.column("messages").to_pylist():
            example_ids, example_labels = tokenize_chat(self.tokenizer, json.loads(text))
            long = len(example_ids) > self.max_seq_len
            ids.append([] if long else example_ids)
            labels.append([] if long else example_labels)
            too_long.append(long)
        return pa.table({"input_ids": pa.array(ids, pa.list_(pa.int32())),
                         "labels": pa.array(labels, pa.list_(pa.int32())),
                         "too_long": pa.array(too_long, pa.bool_())})


def pad_batch(batch: dict[str, Any], pad_id: int) -> dict[str, Any]:
    """A Ray Data batch (numpy arrays of lists) → padded torch tensors with an attention mask."""
    import torch

    rows = list(zip(batch["input_ids"], batch["labels"]))
    width = max(len(ids) for ids, _ in rows)
    input_ids = np.full((len(rows), width), pad_id, dtype=np.int64)
    labels = np.full((len(rows), width), IGNORE, dtype=np.int64)
    mask = np.zeros((len(rows), width), dtype=np.int64)
    for i, (example_ids, example_labels) in enumerate(rows):
        input_ids[i, :len(example_ids)] = example_ids
        labels[i, :len(example_labels)] = example_labels
        mask[i, :len(example_ids)] = 1
    return {"input_ids": torch.from_numpy(input_ids), "labels": torch.from_numpy(labels),
            "attention_mask": torch.from_numpy(mask)}
