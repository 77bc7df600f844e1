"""Concept tokens: ``<name>`` registered in the tokenizer, its embedding row set or optimised.

Used by training (a live hook on the embedding table) and by composition (the learned
vectors written into the table), so rendering never imports the trainer.
"""

from __future__ import annotations

import torch
from torch import Tensor

from seqlib.errors import DataError


class EmbeddingHook:
    """Replaces the new token's row of the input embeddings by a tensor we optimise."""

    def __init__(self, module: torch.nn.Embedding, token_id: int) -> None:
        self.token_id, self.value = token_id, None
        self._handle = module.register_forward_hook(self._hook)

    def _hook(self, module, args, output):
        if self.value is None:
            return output
        mask = (args[0] == self.token_id).unsqueeze(-1)  # (b, seq, 1)
        return torch.where(mask, self.value.to(output.dtype), output)

    def remove(self) -> None:
        self._handle.remove()


def add_tokens(pipe, tokens: dict[str, Tensor]) -> None:
    """Register concept tokens in the tokenizer and give them their learned embeddings
    (``pipe``: anything with ``tokenizer`` and ``text_encoder``)."""
    tokenizer, text_encoder = pipe.tokenizer, pipe.text_encoder
    vocabulary = tokenizer.get_vocab()  # built anew by every call: 60 ms for CLIP's 49k tokens
    new = [t for t in tokens if t not in vocabulary]
    if new:
        tokenizer.add_tokens(new)
        # no mean_resizing: every new row is set just below (it costs a 768 x 768 covariance and a draw)
        text_encoder.resize_token_embeddings(len(tokenizer), mean_resizing=False)
    weight = text_encoder.get_input_embeddings().weight
    with torch.no_grad():
        for token, vector in tokens.items():
            weight[tokenizer.convert_tokens_to_ids(token)] = vector.to(weight.device, weight.dtype)


def initial_embedding(tokenizer, text_encoder, init_word: str) -> Tensor:
    """A new token's starting embedding: the mean of ``init_word``'s token rows, (d,) float32."""
    table = text_encoder.get_input_embeddings().weight
    init_ids = tokenizer(init_word, add_special_tokens=False).input_ids
    if not init_ids:
        raise DataError(f"--init-word {init_word!r} is empty after tokenisation")
    return table[init_ids].mean(0).detach().float().clone()  # fp32 whatever the base's dtype


def init_token(pipe, token: str, init_word: str) -> tuple[Tensor, EmbeddingHook]:
    tokenizer, text_encoder = pipe.tokenizer, pipe.text_encoder
    start = initial_embedding(tokenizer, text_encoder, init_word)
    add_tokens(pipe, {token: start})
    hook = EmbeddingHook(text_encoder.get_input_embeddings(), tokenizer.convert_tokens_to_ids(token))
    return start, hook


def prompt_ids(tokenizer, prompt: str, device) -> Tensor:
    """(1, 77) token ids of a prompt, padded as the text encoder expects."""
    return tokenizer(
        prompt, padding="max_length", max_length=tokenizer.model_max_length, truncation=True, return_tensors="pt"
    ).input_ids.to(device)
