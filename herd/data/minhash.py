"""Near-duplicate detection: MinHash signatures over word n-grams with LSH banding.

A document's signature is, for each of `bands * rows` hash functions, the minimum hash of its
word n-grams (character n-grams for short texts, where one edited word would change most word
n-grams); two signatures agree in a position with probability equal to the Jaccard similarity
of the n-gram sets. LSH puts each band of `rows` values in a bucket, so documents that agree on a
whole band become candidates; a candidate counts as a duplicate when its estimated Jaccard reaches
the threshold. The first occurrence wins, so the result is deterministic for a given order.
"""

from collections.abc import Callable

import numpy as np
import xxhash

MERSENNE = np.uint64((1 << 61) - 1)


class MinHasher:
    def __init__(self, bands: int, rows: int, ngram: int, min_words: int = 0, char_ngram: int = 5, seed: int = 1):
        self.bands, self.rows, self.ngram = bands, rows, ngram
        self.min_words, self.char_ngram = min_words, char_ngram
        rng = np.random.default_rng(seed)
        # (a * x + b) mod p on 64-bit hashes, wrapping at 2^64 first as datasketch does: the
        # wrap-around mixes the bits, so the permutations do not order small hashes alike.
        self.a = rng.integers(1, int(MERSENNE), size=bands * rows, dtype=np.uint64)
        self.b = rng.integers(0, int(MERSENNE), size=bands * rows, dtype=np.uint64)

    def signature(self, words: list[str]) -> np.ndarray:
        """The signature of a text given as its lower-cased words."""
        if len(words) >= self.min_words:
            n = self.ngram
            grams = {" ".join(words[i : i + n]) for i in range(max(1, len(words) - n + 1))}
        else:
            joined, n = " ".join(words), self.char_ngram
            grams = {joined[i : i + n] for i in range(max(1, len(joined) - n + 1))}
        hashes = (xxhash.xxh64_intdigest(g.encode("utf-8", "replace")) for g in grams)
        x = np.fromiter(hashes, dtype=np.uint64, count=len(grams))
        with np.errstate(over="ignore"):
            return ((np.outer(x, self.a) + self.b) % MERSENNE).min(axis=0)


class NearDuplicateIndex:
    """Signatures of the documents kept so far, with their ids, bucketed by band."""

    def __init__(self, bands: int, rows: int, threshold: float):
        self.bands, self.rows, self.threshold = bands, rows, threshold
        self.buckets: list[dict[bytes, list[int]]] = [{} for _ in range(bands)]
        self.signatures: list[np.ndarray] = []
        self.ids: list[str] = []

    def _keys(self, sig: np.ndarray) -> list[bytes]:
        return [sig[i * self.rows : (i + 1) * self.rows].tobytes() for i in range(self.bands)]

    def find(self, sig: np.ndarray, accept: Callable[[str], bool] | None = None) -> tuple[str, float] | None:
        """The earlier document this one nearly duplicates (its id, estimated Jaccard), if any;
        `accept` may veto a candidate by its id."""
        for band, key in enumerate(self._keys(sig)):
            for other in self.buckets[band].get(key, ()):
                jaccard = float((self.signatures[other] == sig).mean())
                if jaccard >= self.threshold and (accept is None or accept(self.ids[other])):
                    return self.ids[other], jaccard
        return None

    def add(self, sig: np.ndarray, doc_id: str) -> None:
        idx = len(self.signatures)
        self.signatures.append(sig)
        self.ids.append(doc_id)
        for band, key in enumerate(self._keys(sig)):
            self.buckets[band].setdefault(key, []).append(idx)
