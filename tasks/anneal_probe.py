"""anneal_probe: a data-value probe (Llama 3). Anneals like anneal_control on the general mix, with
`anneal.probe_frac` of it replaced by the candidate mix of `anneal.probes.<name>` (the stage is
named anneal_probe_<name>); the evaluation judges it against anneal_control, so the difference is
the candidate data's value."""

from herd.data.tokens import load_streams
from herd.errors import HerdError
from herd.stage import CURVE_PLOTS, StageRun, StageSpec, main
from herd.training.anneal import AnnealConfig, anneal, general_mix
from herd.training.config import TrainConfig

PREFIX = "anneal_probe_"

SPEC = StageSpec(__doc__, inputs=("base", "tokenizer"),
                 params={"seed": int, "train": TrainConfig, "anneal": AnnealConfig},
                 headline=("val_loss_hq_averaged",), plots=CURVE_PLOTS, model="base")


def run(st: StageRun) -> None:
    cfg = st.cfg.anneal
    name = st.name.removeprefix(PREFIX)
    if name not in cfg.probes:
        raise HerdError(f"stage {st.name}: anneal.probes has no entry '{name}' "
                        f"(it has: {', '.join(cfg.probes) or 'none'})")
    general, candidate = general_mix(load_streams(st.input("tokenizer"), "train")), dict(cfg.probes[name])
    weights = {d: (1 - cfg.probe_frac) * w / sum(general.values()) for d, w in general.items()}
    for d, w in candidate.items():
        weights[d] = weights.get(d, 0.0) + cfg.probe_frac * w / sum(candidate.values())
    st.manifest["reference"] = "anneal_control"
    anneal(st, weights)


if __name__ == "__main__":
    main(SPEC, run)
