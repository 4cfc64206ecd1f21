"""The corpus' domains, and the check every domain-weight mix in params shares."""

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
