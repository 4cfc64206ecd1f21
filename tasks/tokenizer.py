"""tokenizer: train a byte-level BPE on the filtered corpus and tokenise it once, per domain."""

from dataclasses import dataclass, field

import numpy as np

from herd.config import ParamError, positive
from herd.data.io import read_table
from herd.data.tokens import save_tokenizer, tokenize_stream, train_tokenizer
from herd.stage import StageRun, StageSpec, main


@dataclass
class TokenizerConfig:
    vocab_size: int = 4096
    min_frequency: int = 2
    special_tokens: list[str] = field(
        default_factory=lambda: ["<|endoftext|>", "<|pad|>", "<|system|>", "<|user|>", "<|assistant|>", "<|end|>"]
    )

    def check(self, root) -> None:
        positive(self, "min_frequency")
        if self.vocab_size < 256 + len(self.special_tokens):
            raise ParamError("vocab_size", f"must be at least {256 + len(self.special_tokens)} "
                                           "(the 256 bytes and the special tokens)")


SPEC = StageSpec(__doc__, inputs=("filtered",), params={"tokenizer": TokenizerConfig})


def run(st: StageRun) -> None:
    cfg = st.cfg.tokenizer
    splits = {s: read_table(st.input("filtered") / s) for s in ("train", "validation")}
    tok = train_tokenizer((d["text"] for d in splits["train"]), cfg.vocab_size, cfg.min_frequency,
                          list(cfg.special_tokens))
    save_tokenizer(tok, st.out)
    for split, docs in splits.items():
        for domain in sorted({d["domain"] for d in docs}):
            stream = tokenize_stream(tok, [d["text"] for d in docs if d["domain"] == domain])
            np.save(st.out / f"{split}_{domain}.npy", stream)
            st.metrics[f"{split}_tokens_{domain}"] = int(stream.size)
    chars = sum(len(d["text"]) for d in splits["train"])
    st.metrics["train_tokens"] = sum(v for k, v in st.metrics.items() if k.startswith("train_tokens_"))
    st.metrics["chars_per_token"] = round(chars / st.metrics["train_tokens"], 3)
    st.metrics["vocab_size"] = tok.get_vocab_size()


if __name__ == "__main__":
    main(SPEC, run)
