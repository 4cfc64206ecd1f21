"""The chat format and padded batches for post-training (reward, SFT, DPO, sampling).

A conversation is `[<|system|> instructions] <|user|> question <|assistant|> response <|end|>`, turns
repeated; losses on responses only. The exported tokenizer's chat template renders the same ids.
A base model has never seen that format, so it is sampled in its pretraining format
(`Question: ...\nAnswer:`, ending at <|endoftext|>); SFT then teaches the chat format.
"""

import torch

from herd.data.tokens import ASSISTANT, END, EOT, PAD, SYSTEM, USER, special_id
from herd.errors import HerdError
from herd.model.cross_entropy import IGNORE


class ChatFormat:
    def __init__(self, tok):
        self.tok = tok
        self.user, self.assistant = special_id(tok, USER), special_id(tok, ASSISTANT)
        self.end, self.pad, self.eot = special_id(tok, END), special_id(tok, PAD), special_id(tok, EOT)
        self.stops = (self.end, self.eot)

    def render(self, messages: list[dict], add_generation_prompt: bool = True) -> list[int]:
        """The ids of a conversation ({"role", "content"} messages), ending with the assistant's
        turn marker when it is the assistant's turn to answer."""
        ids = []
        for message in messages:
            role, text = message["role"], self.tok.encode(message["content"]).ids
            if role == "system":
                ids += [special_id(self.tok, SYSTEM), *text]
            elif role == "user":
                ids += [self.user, *text]
            elif role == "assistant":
                ids += [self.assistant, *text, self.end]
            else:
                raise HerdError(f"a chat message's role is system, user or assistant, not '{role}'")
        return ids + [self.assistant] * add_generation_prompt

    def prompt(self, question: str | list[dict]) -> list[int]:
        """The prompt of one question, or of a conversation that ends with the user's turn."""
        messages = [{"role": "user", "content": question}] if isinstance(question, str) else question
        return self.render(messages)

    def base_prompt(self, question: str) -> list[int]:
        return self.tok.encode(f"Question: {question}\nAnswer:").ids

    def base_answer(self, ids: list[int]) -> str:
        """A base model's answer: what it wrote up to a blank line (after which a base model goes
        on with the next document, e.g. the next problem of a worksheet)."""
        return self.decode(ids).split("\n\n")[0].strip()

    def response(self, text: str) -> list[int]:
        return [*self.tok.encode(text).ids, self.end]

    def decode(self, ids: list[int]) -> str:
        return self.tok.decode([i for i in ids if i not in self.stops]).strip()

    def conversations(self, pairs: list[tuple[list[int], list[int]]], max_len: int) -> dict:
        """Whole conversations (prompt + response, the closing <|end|> included), right-padded to
        the longest (at most max_len), with each row's last index: what a reward model reads and
        scores at its last token, the same input as the chat template's rendering of the
        conversation. A conversation longer than max_len loses its beginning: the response and its
        end are what is judged."""
        max_len = min(max_len, max(len(p) + len(r) for p, r in pairs))
        ids = torch.full((len(pairs), max_len), self.pad, dtype=torch.long)
        last = torch.zeros(len(pairs), dtype=torch.long)
        for i, (prompt, response) in enumerate(pairs):
            seq = (prompt + response)[-max_len:]
            ids[i, : len(seq)] = torch.tensor(seq)
            last[i] = len(seq) - 1
        return {"input_ids": ids, "last": last}

    def batch(self, pairs: list[tuple[list[int], list[int]]], max_len: int) -> dict:
        """Input ids right-padded to the longest row (at most max_len), labels on response tokens
        only, and each row's last index."""
        max_len = min(max_len, max(len(p) + len(r) for p, r in pairs) - 1)
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

    def packed(self, pairs: list[tuple[list[int], list[int]]], seq_len: int) -> dict:
        """Conversations packed end to end into rows of seq_len input tokens, labels on response
        tokens only (so nothing is learnt across a boundary); a conversation that would cross a
        row's end starts the next row, one longer than a row is cut."""
        rows: list[tuple[list[int], list[bool]]] = []
        tokens, targets = [], []
        for prompt, response in pairs:
            seq, flags = (prompt + response)[: seq_len + 1], ([False] * len(prompt) + [True] * len(response))
            if tokens and len(tokens) + len(seq) > seq_len + 1:
                rows.append((tokens, targets))
                tokens, targets = [], []
            tokens, targets = tokens + seq, targets + flags[: len(seq)]
        rows.append((tokens, targets))
        ids = torch.full((len(rows), seq_len), self.pad, dtype=torch.long)
        labels = torch.full((len(rows), seq_len), IGNORE, dtype=torch.long)
        for i, (seq, flags) in enumerate(rows):
            n = len(seq) - 1
            ids[i, :n] = torch.tensor(seq[:-1])
            target = torch.tensor(seq[1:])
            labels[i, :n] = torch.where(torch.tensor(flags[1:]), target, torch.full_like(target, IGNORE))
        return {"input_ids": ids, "labels": labels}


# What each chat token stands for in the pretraining format a base model knows.
CHAT_TOKEN_TEXT = {USER: "Question:", ASSISTANT: "\nAnswer:", END: "\n\n", SYSTEM: "Instructions:"}


@torch.no_grad()
def seed_chat_tokens(model, fmt: ChatFormat) -> None:
    """Give the chat tokens, which pretraining never shows, the mean input embedding (and, tied or
    not, output row) of the text they stand for, so that a base model reads the chat format as the
    format it learnt its skills in, and ends an answer with <|end|> where it would end a paragraph;
    untrained chat-token embeddings are a known trap of fine-tuning base models (Llama 3)."""
    for token, text in CHAT_TOKEN_TEXT.items():
        tid = fmt.tok.token_to_id(token)
        if tid is None:
            continue
        ids = torch.tensor(fmt.tok.encode(text).ids)
        model.model.embed_tokens.weight[tid] = model.model.embed_tokens.weight[ids].mean(0)
        if model.lm_head.weight is not model.model.embed_tokens.weight:
            model.lm_head.weight[tid] = model.lm_head.weight[ids].mean(0)
