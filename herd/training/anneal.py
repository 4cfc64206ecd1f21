"""Annealing (Llama 3.1): a short run with the learning rate decayed linearly to zero, the model an
average of the run's last checkpoints (Polyak averaging). The stages anneal, anneal_control and
anneal_probe_<name> run it on different mixes."""

from dataclasses import dataclass, field

from safetensors.torch import load_file, save_file

from herd.config import ParamError, fraction, positive
from herd.data.domains import check_weights
from herd.data.tokens import load_streams
from herd.model.llama import load_checkpoint
from herd.training.averaging import averaged
from herd.training.config import check_optimization
from herd.training.lm_stage import eval_losses, save_model, train_lm
from herd.training.schedule import linear_to_zero


@dataclass
class AnnealConfig:
    """A short run on a high-quality mix with the learning rate decayed linearly to zero."""

    seq_len: int = 512
    batch_size: int = 8
    steps: int = 80
    lr: float = 1e-3
    weight_decay: float = 0.1
    grad_clip: float = 1.0
    mix: dict[str, float] = field(default_factory=lambda: {"math": 0.7, "code": 0.3})  # the high-quality mix
    average_last: int = 4  # candidates for the average: this many checkpoints from the end of the run, ...
    average_every: int = 5  # ... this many steps apart
    # Data-value probes (Llama 3): each entry anneals on probe_frac of its mix plus the general mix,
    # and is judged against anneal_control.
    probes: dict[str, dict[str, float]] = field(default_factory=dict)
    probe_frac: float = 0.3

    def check(self, root) -> None:
        check_optimization(self)
        positive(self, "average_every")
        fraction(self, "probe_frac")
        check_weights(self.mix, "mix")
        for name, probe in self.probes.items():
            if not name.isidentifier():
                raise ParamError(f"probes.{name}", "a probe's name must be a plain identifier (it names a stage)")
            check_weights(probe, f"probes.{name}")
        if self.average_last < 1 or (self.average_last - 1) * self.average_every > self.steps - 1:
            raise ParamError("average_last", f"must be at least 1, and fit {self.average_last} checkpoints "
                             f"{self.average_every} steps apart into {self.steps} steps")


def anneal(st, weights: dict[str, float]) -> None:
    """Anneal on `weights` and save the average of the last checkpoints. Held-out loss on the
    high-quality mix (`val_loss_hq_*`) is measured for the last checkpoint, for each candidate
    checkpoint (logged to MLflow at its step), for the uniform average of all candidates and for
    the model kept (`averaged`)."""
    cfg = st.cfg.anneal
    tokens = st.input("tokenizer")
    model = load_checkpoint(st.input("base") / "model")
    val = load_streams(tokens, "validation")
    hq = {d: val[d] for d in cfg.mix if d in val}
    snapshots = st.checkpoint_dir() / "snapshots"
    snapshots.mkdir(exist_ok=True)
    keep = {cfg.steps - 1 - i * cfg.average_every for i in range(cfg.average_last)}

    def hq_loss(m) -> float:
        return eval_losses(st, m, hq, cfg.seq_len)["mean"]

    def snapshot(step: int, model) -> None:
        # Kept on disk, not in memory, so a resumed run averages the same checkpoints.
        if step in keep:
            tied = model.cfg.tie_embeddings
            state = {k: v.detach().clone() for k, v in model.state_dict().items()
                     if not (tied and k == "lm_head.weight")}
            save_file(state, str(snapshots / f"step_{step}.safetensors"))
            st.checkpoints.written(snapshots)
            model.eval()
            st.log_step({"snapshot_val_loss_hq": hq_loss(model)}, step)
            model.train()

    st.metrics.update(train_lm(
        st, model, tokens, section=cfg, weights=weights, eval_seq_lens=[cfg.seq_len],
        lr_at=lambda step: linear_to_zero(step, cfg.steps, cfg.lr), on_step_end=snapshot,
    ))
    st.metrics["val_loss_hq_last"] = hq_loss(model)
    newest_first = sorted(snapshots.glob("step_*.safetensors"), key=lambda f: -int(f.stem.split("_")[1]))
    states = [load_file(str(f)) for f in newest_first]
    st.metrics["val_loss_hq_uniform_average"] = hq_loss(averaged(model, states))
    kept, best = [states[0]], st.metrics["val_loss_hq_last"]  # the newest snapshot is the last step
    # Greedy (Wortsman et al.'s greedy soup): an older checkpoint joins the average only if the
    # held-out loss does not rise, so the average is never worse than the last checkpoint; while the
    # loss still falls fast, the older ones only drag it back.
    for state in states[1:]:
        loss = hq_loss(averaged(model, [*kept, state]))
        if loss <= best:
            kept, best = [*kept, state], loss
    averaged(model, kept)
    st.metrics["averaged_checkpoints"] = len(kept)
    st.metrics["val_loss_hq_averaged"] = best
    save_model(st, model, tokens)
