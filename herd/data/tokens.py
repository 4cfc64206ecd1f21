"""The tokenizer (byte-level BPE, Hugging Face `tokenizers`) and token streams on disk.

Documents are tokenised once, by the tokenizer stage, into one flat stream per split and domain
(`<split>_<domain>.npy`, documents separated by the end-of-text token); training stages read
windows out of these streams.
"""

import json
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

from herd.errors import HerdError

EOT, PAD, USER, ASSISTANT, END = "<|endoftext|>", "<|pad|>", "<|user|>", "<|assistant|>", "<|end|>"
SYSTEM = "<|system|>"


def chat_template(system: bool) -> str:
    """Herd's chat format (herd/post/chat.py) as a `transformers` chat template. A tokenizer without
    the system token refuses a system message: dropping it would answer another prompt."""
    system_turn = "{{- '<|system|>' + message['content'] -}}" if system else (
        "{{- raise_exception('this tokenizer has no <|system|> token for a system message') -}}")
    return (
        "{%- for message in messages -%}"
        f"{{%- if message['role'] == 'system' -%}}{system_turn}"
        "{%- elif message['role'] == 'user' -%}{{- '<|user|>' + message['content'] -}}"
        "{%- elif message['role'] == 'assistant' -%}{{- '<|assistant|>' + message['content'] + '<|end|>' -}}"
        "{%- else -%}{{- raise_exception('the Herd chat format has system, user and assistant messages, not '"
        " + message['role']) -}}"
        "{%- endif -%}"
        "{%- endfor -%}"
        "{%- if add_generation_prompt -%}{{- '<|assistant|>' -}}{%- endif -%}"
    )


def train_tokenizer(texts, vocab_size: int, min_frequency: int, special_tokens: list[str]) -> Tokenizer:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, min_frequency=min_frequency, special_tokens=list(special_tokens),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    return tok


def save_tokenizer(tok: Tokenizer, folder: Path) -> None:
    """tokenizer.json plus the small config `transformers.AutoTokenizer` needs to load it."""
    folder.mkdir(parents=True, exist_ok=True)
    tok.save(str(folder / "tokenizer.json"))
    # No BOS is added (the post-processor adds nothing); <|endoftext|> ends every document in the token
    # streams, so it is the model's document boundary at both ends (config.json's bos and eos ids).
    # Decoding keeps the spaces `tokenizers` decodes, as Herd's own decode does.
    (folder / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "PreTrainedTokenizerFast", "bos_token": EOT, "eos_token": EOT, "pad_token": PAD,
        "additional_special_tokens": [t for t in (SYSTEM, USER, ASSISTANT, END) if tok.token_to_id(t) is not None],
        "chat_template": chat_template(tok.token_to_id(SYSTEM) is not None),
        "clean_up_tokenization_spaces": False, "model_max_length": 1 << 20,
    }, indent=2) + "\n")


def load_tokenizer(folder: Path) -> Tokenizer:
    path = folder / "tokenizer.json"
    if not path.is_file():
        raise HerdError(f"missing tokenizer {path}: run `dvc repro tokenizer` first")
    return Tokenizer.from_file(str(path))


def special_id(tok: Tokenizer, token: str) -> int:
    tid = tok.token_to_id(token)
    if tid is None:
        raise HerdError(f"the tokenizer has no special token {token}; add it to tokenizer.special_tokens")
    return tid


def tokenize_stream(tok: Tokenizer, texts: list[str]) -> np.ndarray:
    """One flat stream: each document's tokens followed by the end-of-text token."""
    eot = special_id(tok, EOT)
    ids = []
    for enc in tok.encode_batch(texts):
        ids.extend(enc.ids)
        ids.append(eot)
    return np.asarray(ids, dtype=np.uint16 if tok.get_vocab_size() < 2**16 else np.int32)


def load_streams(folder: Path, split: str) -> dict[str, np.ndarray]:
    """{domain: token stream} for one split."""
    streams = {p.stem.split("_", 1)[1]: np.load(p) for p in sorted(folder.glob(f"{split}_*.npy"))}
    if not streams:
        raise HerdError(f"no {split} token streams in {folder}: run `dvc repro tokenizer` first")
    return streams
