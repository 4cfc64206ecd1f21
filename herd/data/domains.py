"""The corpus' domains, the check every domain-weight mix in params shares, and mixes built from them."""

from herd.config import ParamError

DOMAINS = ("web", "prose", "code", "math", "long")


def check_domain(domain: str, key: str) -> None:
    if domain not in DOMAINS:
        raise ParamError(key, f"'{domain}' is not one of {', '.join(DOMAINS)}")


def check_weights(weights: dict[str, float], key: str) -> None:
    """Known domains, non-negative weights, not all zero."""
    for domain, weight in weights.items():
        check_domain(domain, f"{key}.{domain}")
        if weight < 0:
            raise ParamError(f"{key}.{domain}", "weights must be non-negative")
    if sum(weights.values()) <= 0:
        raise ParamError(key, "weights must not all be zero")


def general_mix(streams: dict) -> dict[str, float]:
    """The mix the filtered corpus holds (each domain by its size in tokens): what pretraining drew."""
    return {d: float(len(s)) for d, s in streams.items()}


def blend(base: dict[str, float], extra: dict[str, float], frac: float) -> dict[str, float]:
    """`extra` for `frac` of the draws, `base` for the rest, each normalised first."""
    weights = {d: (1 - frac) * w / sum(base.values()) for d, w in base.items()}
    for d, w in extra.items():
        weights[d] = weights.get(d, 0.0) + frac * w / sum(extra.values())
    return weights
