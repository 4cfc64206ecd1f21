"""Runtime: knobs and machinery that never change a result (environment, tracking, registry, serving)."""
