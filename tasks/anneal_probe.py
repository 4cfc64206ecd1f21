"""anneal_probe: a data-value probe (Llama 3). Anneals like anneal_control on the general mix, with
`anneal.probe_frac` of it replaced by the candidate mix of `anneal.probes.<name>` (the stage is
named anneal_probe_<name>); the evaluation judges it against anneal_control, so the difference is
the candidate data's value."""

from herd.data.domains import blend, general_mix
from herd.data.tokens import load_streams
from herd.errors import HerdError
from herd.stage import CURVE_PLOTS, StageRun, StageSpec, main
from herd.training.anneal import AnnealConfig, anneal
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
    general = general_mix(load_streams(st.input("tokenizer"), "train"))
    st.manifest["reference"] = "anneal_control"
    anneal(st, blend(general, dict(cfg.probes[name]), cfg.probe_frac))


if __name__ == "__main__":
    main(SPEC, run)
