"""LoRA and DoRA (herd/model/lora.py): only the adapters train; merged, they leave a plain Llama
with the adapted model's logits, which the Hugging Face export carries to `transformers`."""

from dataclasses import asdict
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from herd.config import ParamError
from herd.data.tokens import ASSISTANT, END, EOT, PAD, USER, save_tokenizer, train_tokenizer
from herd.errors import HerdError
from herd.model.decoding import for_decoding
from herd.model.export import export_model
from herd.model.llama import Llama, LlamaConfig
from herd.model.lora import DEFAULT_TARGETS, LoraConfig, apply_lora, count_params, merge_lora

transformers = pytest.importorskip("transformers")

TEXTS = ["The quick brown fox jumps over the lazy dog.", "What is 12 + 30? It is 42.",
         "def add(a, b):\n    return a + b\n"] * 10


@pytest.fixture(scope="module")
def tok():
    return train_tokenizer(TEXTS, 300, 2, [EOT, PAD, USER, ASSISTANT, END])


def tiny(tok) -> Llama:
    cfg = LlamaConfig(vocab_size=tok.get_vocab_size(), dim=32, n_layers=2, n_heads=4, n_kv_heads=2, ffn_dim=64,
                      max_seq_len=64, eot_id=tok.token_to_id(EOT), pad_id=tok.token_to_id(PAD))
    model = Llama(cfg)
    model.init_weights(0.1, torch.Generator().manual_seed(0))
    return model


def train(model: Llama, steps: int = 5) -> None:
    """A few AdamW steps of next-token loss on random tokens, on the parameters that require
    gradients (as herd's training loop builds its optimizer)."""
    torch.manual_seed(1)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    model.train()
    for _ in range(steps):
        x = torch.randint(0, model.cfg.vocab_size, (4, 16))
        loss = F.cross_entropy(model(x[:, :-1]).flatten(0, 1), x[:, 1:].flatten())
        loss.backward()
        opt.step()
        opt.zero_grad()
    model.eval()


@pytest.mark.parametrize("dora", [False, True])
def test_adapters_train_alone_and_merge_into_an_exportable_llama(tmp_path, tok, dora):
    model = tiny(tok)
    original = {k: v.clone() for k, v in model.state_dict().items()}
    cfg = LoraConfig(rank=4, dora=dora)
    assert apply_lora(model, cfg) is model

    # Trainable: A and B (and DoRA's magnitude) of each targeted projection of each layer, nothing else.
    trainable = {n: p for n, p in model.named_parameters() if p.requires_grad}
    assert len(trainable) == model.cfg.n_layers * len(DEFAULT_TARGETS) * (3 if dora else 2)
    assert all(".lora_" in n for n in trainable)
    assert count_params(model) == (sum(p.numel() for p in trainable.values()),
                                   sum(p.numel() for p in model.parameters()))

    train(model)
    x = torch.randint(0, model.cfg.vocab_size, (2, 20))
    with torch.no_grad():
        adapted = model(x)
        # Generation decodes on a merged copy; the model keeps training its adapters.
        assert torch.allclose(for_decoding(model, "fp32")(x), adapted, atol=1e-5)
        assert len(trainable) == sum(p.requires_grad for p in model.parameters())
    assert merge_lora(model) is model

    # The plain Llama again: same keys, all trainable; only the targeted weights moved, and all of them.
    assert list(model.state_dict()) == list(original)
    assert all(p.requires_grad for p in model.parameters())
    changed = {k for k, v in model.state_dict().items() if not torch.equal(v, original[k])}
    assert changed == {f"model.layers.{i}.{'mlp' if t.endswith(('gate_proj', 'up_proj', 'down_proj')) else 'self_attn'}"
                       f".{t}.weight" for i in range(model.cfg.n_layers) for t in DEFAULT_TARGETS}
    with torch.no_grad():
        assert torch.allclose(model(x), adapted, atol=1e-5)

    tokens_dir = tmp_path / "tokenizer"
    save_tokenizer(tok, tokens_dir)
    st = SimpleNamespace(name="sft", out=tmp_path / "sft", run_id="run-sft", metrics={}, manifest={},
                         recipe_params={"lora": asdict(cfg)}, lineage=dict)
    folder = export_model(st, model, tokens_dir, "policy")
    hf = transformers.AutoModelForCausalLM.from_pretrained(folder).eval()
    with torch.no_grad():
        assert torch.allclose(hf(x).logits, adapted, atol=1e-5)


def test_rank_zero_leaves_the_model_untouched(tok):
    model = tiny(tok)
    before = [(name, type(m)) for name, m in model.named_modules()]
    assert apply_lora(model, LoraConfig()) is model
    assert [(name, type(m)) for name, m in model.named_modules()] == before
    assert all(p.requires_grad for p in model.parameters())
    assert merge_lora(model) is model and [(name, type(m)) for name, m in model.named_modules()] == before
    assert count_params(model) == (model.num_params(), model.num_params())


def test_unknown_target_is_named_with_the_models_linear_modules(tok):
    model = tiny(tok)
    with pytest.raises(HerdError, match=r"\['qkv'\] match no module.*\['down_proj', 'gate_proj', 'k_proj', "
                                        r"'lm_head', 'o_proj', 'q_proj', 'up_proj', 'v_proj'\]"):
        apply_lora(model, LoraConfig(rank=4, targets=["q_proj", "qkv"]))
    assert all(p.requires_grad for p in model.parameters())  # refused before any change


@pytest.mark.parametrize(("values", "key"), [({"rank": -1}, "rank"), ({"alpha": 0.0}, "alpha"),
                                             ({"dropout": 1.0}, "dropout"), ({"rank": 8, "targets": []}, "targets")])
def test_check_refuses_bad_values(values, key):
    with pytest.raises(ParamError) as exc:
        LoraConfig(**values).check(None)
    assert exc.value.key == key
    LoraConfig(rank=8, dropout=0.1, dora=True).check(None)
