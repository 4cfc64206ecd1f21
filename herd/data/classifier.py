"""A fastText-style text classifier: hashed word unigrams and bigrams, a mean of their embeddings,
a linear layer. Llama 3 filters web text with such a model (reference text vs raw web) and labels
domains with another; both are trained inside the pipeline on the corpus itself.

Training uses torch; scoring is plain numpy so worker processes stay light.
"""

import json
import re
from pathlib import Path

import numpy as np
import torch
import xxhash
from safetensors.numpy import load_file, save_file

WORD = re.compile(r"\w+|[^\w\s]")


def features(text: str, buckets: int, max_tokens: int = 2000) -> np.ndarray:
    """Bucket ids of the document's word unigrams and bigrams (hashing trick)."""
    words = WORD.findall(text.lower()[: max_tokens * 8])[:max_tokens]
    grams = words + [f"{a} {b}" for a, b in zip(words, words[1:], strict=False)]
    if not grams:
        grams = [""]
    hashes = (xxhash.xxh32_intdigest(g.encode("utf-8", "replace")) % buckets for g in grams)
    return np.fromiter(hashes, dtype=np.int64, count=len(grams))


class TextClassifier:
    def __init__(self, classes: list[str], buckets: int = 1 << 18, dim: int = 16, threshold: float = 0.0):
        self.classes, self.buckets, self.dim = list(classes), buckets, dim
        self.threshold = threshold  # the probability of the positive class a kept text needs (calibrated)
        self.embedding = np.zeros((buckets, dim), dtype=np.float32)
        self.weight = np.zeros((len(classes), dim), dtype=np.float32)
        self.bias = np.zeros(len(classes), dtype=np.float32)

    def fit(self, texts: list[str], labels: list[str], epochs: int, seed: int, lr: float = 0.05) -> "TextClassifier":
        torch.manual_seed(seed)
        feats = [torch.from_numpy(features(t, self.buckets)) for t in texts]
        y = torch.tensor([self.classes.index(label) for label in labels])
        bag = torch.nn.EmbeddingBag(self.buckets, self.dim, mode="mean")
        head = torch.nn.Linear(self.dim, len(self.classes))
        opt = torch.optim.Adam([*bag.parameters(), *head.parameters()], lr=lr)
        # Balance the classes so the decision threshold means the same whatever the class sizes.
        counts = torch.bincount(y, minlength=len(self.classes)).clamp(min=1).float()
        loss_fn = torch.nn.CrossEntropyLoss(weight=counts.sum() / counts)
        g = torch.Generator().manual_seed(seed)
        for _ in range(epochs):
            for batch in torch.randperm(len(feats), generator=g).split(64):
                flat = torch.cat([feats[i] for i in batch])
                offsets = torch.tensor([0] + [len(feats[i]) for i in batch[:-1]]).cumsum(0)
                loss = loss_fn(head(bag(flat, offsets)), y[batch])
                opt.zero_grad()
                loss.backward()
                opt.step()
        self.embedding = bag.weight.detach().numpy().copy()
        self.weight, self.bias = head.weight.detach().numpy().copy(), head.bias.detach().numpy().copy()
        return self

    def predict_proba(self, text: str) -> np.ndarray:
        z = self.weight @ self.embedding[features(text, self.buckets)].mean(0) + self.bias
        e = np.exp(z - z.max())
        return e / e.sum()

    def save(self, folder: Path, name: str) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        save_file({"embedding": self.embedding, "weight": self.weight, "bias": self.bias},
                  str(folder / f"{name}.safetensors"))
        (folder / f"{name}.json").write_text(json.dumps({"classes": self.classes, "buckets": self.buckets,
                                                         "dim": self.dim, "threshold": self.threshold}) + "\n")

    @classmethod
    def load(cls, folder: Path, name: str) -> "TextClassifier":
        meta = json.loads((folder / f"{name}.json").read_text())
        clf = cls(meta["classes"], meta["buckets"], meta["dim"], meta["threshold"])
        tensors = load_file(str(folder / f"{name}.safetensors"))
        clf.embedding, clf.weight, clf.bias = tensors["embedding"], tensors["weight"], tensors["bias"]
        return clf
