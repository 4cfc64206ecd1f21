"""The chat format and padded batches for post-training (reward, SFT, DPO).

A conversation is `<|user|> question <|assistant|> response <|end|>`; losses on responses only.
A base model has never seen that format, so it is sampled in its pretraining format
(`Question: ...\nAnswer:`, ending at <|endoftext|>); SFT then teaches the chat format.
"""

import torch

from herd.data.tokens import ASSISTANT, END, EOT, PAD, USER, special_id
from herd.model.cross_entropy import IGNORE


class ChatFormat:
    def __init__(self, tok):
        self.tok = tok
        self.user, self.assistant = special_id(tok, USER), special_id(tok, ASSISTANT)
        self.end, self.pad, self.eot = special_id(tok, END), special_id(tok, PAD), special_id(tok, EOT)
        self.stops = (self.end, self.eot)

    def prompt(self, question: str) -> list[int]:
        return [self.user, *self.tok.encode(question).ids, self.assistant]

    def base_prompt(self, question: str) -> list[int]:
        return self.tok.encode(f"Question: {question}\nAnswer:").ids

    def response(self, text: str) -> list[int]:
        return [*self.tok.encode(text).ids, self.end]

    def decode(self, ids: list[int]) -> str:
        return self.tok.decode([i for i in ids if i not in self.stops]).strip()

    def conversations(self, pairs: list[tuple[list[int], list[int]]], max_len: int) -> dict:
        """Whole conversations (prompt + response, the closing <|end|> included), right-padded,
        with each row's last index: what a reward model reads and scores at its last token, the
        same input as the chat template's rendering of the conversation."""
        ids = torch.full((len(pairs), max_len), self.pad, dtype=torch.long)
        last = torch.zeros(len(pairs), dtype=torch.long)
        for i, (prompt, response) in enumerate(pairs):
            seq = (prompt + response)[:max_len]
            ids[i, : len(seq)] = torch.tensor(seq)
            last[i] = len(seq) - 1
        return {"input_ids": ids, "last": last}

    def batch(self, pairs: list[tuple[list[int], list[int]]], max_len: int) -> dict:
        """Right-padded input ids, labels on response tokens only, and each row's last index."""
        ids = torch.full((len(pairs), max_len), self.pad, dtype=torch.long)
        labels = torch.full((len(pairs), max_len), IGNORE, dtype=torch.long)
        last = torch.zeros(len(pairs), dtype=torch.long)
        for i, (prompt, response) in enumerate(pairs):
            seq = (prompt + response)[: max_len + 1]
            n = len(seq) - 1
            ids[i, :n] = torch.tensor(seq[:-1])
            # labels[t] is the token after position t; only response tokens are predicted
            target = torch.tensor(seq[1:])
            mask = torch.arange(1, len(seq)) >= len(prompt)
            labels[i, :n] = torch.where(mask, target, torch.full_like(target, IGNORE))
            last[i] = n - 1
        return {"input_ids": ids, "labels": labels, "last": last}
