"""The Llama model: Hugging Face layout, KV-cache generation, reward head."""

import pytest
import torch

from herd.errors import HerdError
from herd.model.decoding import for_decoding
from herd.model.llama import Llama, LlamaConfig, explicit_attention, load_checkpoint, mask_bias, save_checkpoint
from herd.training.precision import autocast

CFG = LlamaConfig(vocab_size=97, dim=32, n_layers=2, n_heads=4, n_kv_heads=2, ffn_dim=64, max_seq_len=64)


def model(head="lm", tie=True):
    torch.manual_seed(0)
    m = Llama(LlamaConfig(**{**CFG.__dict__, "tie_embeddings": tie}), head)
    m.init_weights(0.1)
    return m.eval()


@pytest.mark.parametrize("tie", [True, False])
def test_transformers_loads_checkpoint_with_same_logits(tmp_path, tie):
    transformers = pytest.importorskip("transformers")
    m = model(tie=tie)
    save_checkpoint(m, tmp_path)
    hf = transformers.LlamaForCausalLM.from_pretrained(tmp_path).eval()
    x = torch.randint(0, 97, (2, 20))
    with torch.no_grad():
        assert torch.allclose(hf(x).logits, m(x), atol=1e-5)


@pytest.mark.parametrize("scaling", ["linear", "ntk", "llama3"])
def test_scaled_rope_loads_in_transformers_with_same_logits(tmp_path, scaling):
    """Context extension's RoPE scaling travels in config.json: `transformers` computes the same
    logits at positions beyond the original context, and each method changes them."""
    transformers = pytest.importorskip("transformers")
    m = model()
    x = torch.randint(0, 97, (2, 60))
    with torch.no_grad():
        plain = m(x)
        m.cfg.rope_scaling, m.cfg.rope_factor, m.cfg.rope_original_len = scaling, 4.0, 16
        scaled = m(x)
    save_checkpoint(m, tmp_path)
    hf = transformers.LlamaForCausalLM.from_pretrained(tmp_path).eval()
    with torch.no_grad():
        assert torch.allclose(hf(x).logits, scaled, atol=1e-5)
    assert not torch.allclose(plain, scaled, atol=1e-3)
    assert load_checkpoint(tmp_path).cfg.rope_scaling == scaling


def test_save_load_roundtrip_and_reward_head(tmp_path):
    m = model()
    save_checkpoint(m, tmp_path / "lm")
    x = torch.randint(0, 97, (2, 10))
    with torch.no_grad():
        assert torch.equal(load_checkpoint(tmp_path / "lm")(x), m(x))
    rm = load_checkpoint(tmp_path / "lm", head="score")
    with torch.no_grad():
        assert rm(x).shape == (2, 10) and torch.all(rm(x) == 0)  # fresh head scores zero


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_fused_loss_matches_logits_then_cross_entropy(precision):
    x = torch.randint(0, 97, (3, 40))
    labels = torch.randint(0, 97, (3, 40))
    labels[:, :7] = -100  # a prompt, excluded from the loss
    results = []
    for fused in (False, True):
        m = model().train()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
            if fused:
                loss = m(x, labels=labels)
            else:
                loss = torch.nn.functional.cross_entropy(m(x).flatten(0, 1).float(), labels.flatten())
        loss.backward()
        results.append((loss.detach(), {n: p.grad for n, p in m.named_parameters()}))
    (plain, plain_grads), (fused, fused_grads) = results
    tol = 1e-5 if precision == "fp32" else 2e-2
    assert torch.allclose(fused, plain, rtol=tol)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
        assert torch.allclose(model()(x, labels=labels), plain, rtol=tol)  # evaluation: no gradients made
    for name, grad in plain_grads.items():
        assert torch.allclose(fused_grads[name], grad, rtol=tol, atol=tol * grad.abs().max()), name


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_attention_as_matmuls_equals_the_fused_kernel_and_its_gradients(dtype):
    """Short bf16 attention on CPU runs as plain matmuls: causal (queries the last positions of the
    keys, as a cache's prompt) or masked, with the fused kernel's outputs and gradients."""
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(3, h, 9, 8, generator=g, dtype=dtype).requires_grad_() for h in (6, 2, 2))
    mask = torch.rand(3, 1, 9, 9, generator=g) > 0.3
    mask |= torch.eye(9, dtype=torch.bool)  # every query attends somewhere
    for kwargs, m in (({"is_causal": True}, None), ({"attn_mask": mask}, mask)):
        want = torch.nn.functional.scaled_dot_product_attention(q, k, v, enable_gqa=True, **kwargs)
        got = explicit_attention(q, k, v, None if m is None else mask_bias(m, dtype))
        tol = 1e-5 if dtype == torch.float32 else 2e-2
        assert torch.allclose(got.float(), want.float(), atol=tol)
        grads = [torch.autograd.grad(out.float().pow(2).sum(), (q, k, v)) for out in (got, want)]
        assert all(torch.allclose(a.float(), b.float(), atol=tol * 10) for a, b in zip(*grads, strict=True))


def test_kv_cache_matches_full_forward():
    m = model()
    x = torch.randint(0, 97, (3, 12))
    with torch.no_grad():
        full = m(x)
        cache = m.new_cache(3, 16)  # longer than used: a decode step masks the slots past its position
        steps = [m(x[:, :8], cache=cache, start=0)]
        for t in range(8, 12):
            steps.append(m(x[:, t : t + 1], cache=cache, start=t))
    assert torch.allclose(torch.cat(steps, 1), full, atol=1e-5)


def test_left_padded_prompts_give_the_logits_of_each_prompt_alone():
    """Batched generation left-pads prompts of different lengths: padding is never attended to
    and positions start after it, through the prompt pass and the cached steps."""
    m = model()
    prompts = [torch.randint(0, 97, (n,)) for n in (5, 9, 12)]
    nxt = torch.randint(0, 97, (3, 1))
    batch = torch.zeros(3, 12, dtype=torch.long)
    for i, p in enumerate(prompts):
        batch[i, 12 - len(p):] = p
    pad = torch.tensor([7, 3, 0])
    with torch.no_grad():
        cache = m.new_cache(3, 13)
        last = m(batch, cache=cache, start=0, pad=pad)[:, -1]
        step = m(nxt, cache=cache, start=12, pad=pad)[:, -1]
        for i, p in enumerate(prompts):
            alone = m(torch.cat([p, nxt[i]])[None])[0]
            assert torch.allclose(last[i], alone[-2], atol=1e-5)
            assert torch.allclose(step[i], alone[-1], atol=1e-5)


def test_batched_generation_equals_one_prompt_at_a_time():
    from herd.post.generate import generate, greedy

    m = model()
    prompts = [torch.randint(0, 97, (n,)).tolist() for n in (3, 7, 4, 10, 7)]
    batched = greedy(m, prompts, 8, stop_ids=(0,), precision="fp32", batch_size=4)
    assert batched == [greedy(m, [p], 8, stop_ids=(0,), precision="fp32")[0] for p in prompts]
    g = torch.Generator().manual_seed(0)
    samples = generate(m, prompts, 8, (0,), n=3, temperature=1.0, top_p=0.9, generator=g, precision="fp32")
    assert [len(s) for s in samples] == [3] * 5 and len({tuple(s) for s in samples[3]}) > 1


@pytest.mark.parametrize("precision", ["bf16", "fp32"])
@pytest.mark.parametrize("variant", [{}, {"tie_embeddings": False}, {"n_experts": 4, "experts_per_token": 2}])
def test_the_decoding_copy_computes_the_same_logits_bit_for_bit(precision, variant):
    """Generation runs on `for_decoding`'s copy (joined projections, bf16 weights): a padded prompt
    and cached decode steps, placed all at once as generate does, give exactly the original's logits,
    and the original is left as it was."""
    torch.manual_seed(0)
    m = Llama(LlamaConfig(**{**CFG.__dict__, **variant})).eval()
    m.init_weights(0.1)
    before = {k: v.clone() for k, v in m.state_dict().items()}
    fast = for_decoding(m, precision)
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    x, pad = torch.randint(0, 97, (3, 14)), torch.tensor([0, 4, 9])
    with torch.no_grad(), autocast(precision):
        logits = []
        for model in (m, fast):
            cache = model.new_cache(3, 16, dtype)
            steps = model.place(12, 4, 16, pad, dtype)
            logits.append([model(x[:, :12], cache=cache, pad=pad)]
                          + [model.lm_head(model.hidden(x[:, t : t + 1], cache, t, pad,
                                                        tuple(s[:, :, t - 12 : t - 11] for s in steps)))
                             for t in (12, 13)])
    assert all(torch.equal(a, b) for a, b in zip(*logits, strict=True))
    assert {k: v for k, v in m.state_dict().items()}.keys() == before.keys()
    assert all(torch.equal(v, before[k]) for k, v in m.state_dict().items())
    assert for_decoding(fast, precision) is fast


def test_compiled_decoding_samples_the_same_tokens_as_eager():
    """runtime.generate.compile rounds bf16 intermediates as eager does: at this size even tempered,
    nucleus-cut samples come out the same (inductor's default fp32 intermediates changed one), for
    two batch sizes and every prompt length in one graph each."""
    from herd.post.generate import generate

    torch.manual_seed(0)
    m = Llama(LlamaConfig(**{**CFG.__dict__, "vocab_size": 512})).eval()
    m.init_weights(0.1)
    prompts = [torch.randint(3, 512, (n,)).tolist() for n in (3, 9, 5, 12, 7, 4, 11)]  # batches of 4 and 3
    outs = [generate(fast, prompts, 12, (), temperature=1.0, top_p=0.9, generator=torch.Generator().manual_seed(1),
                     batch_size=4)
            for fast in (for_decoding(m, "bf16"), for_decoding(m, "bf16", compile=True))]
    assert outs[0] == outs[1]


def test_a_decoding_copy_is_refused_for_another_precision_and_for_a_reward_model():
    fast = for_decoding(model(), "bf16")
    with pytest.raises(HerdError, match="prepared for decoding in bf16, not fp32: prepare the original"):
        for_decoding(fast, "fp32")
    with pytest.raises(HerdError, match="only a language model decodes; this one has a 'score' head"):
        for_decoding(model("score"), "bf16")


def test_mixture_of_experts_loads_as_mixtral_with_same_logits(tmp_path):
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    m = Llama(LlamaConfig(**{**CFG.__dict__, "n_experts": 4, "experts_per_token": 2})).eval()
    m.init_weights(0.1)
    save_checkpoint(m, tmp_path)
    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert type(hf).__name__ == "MixtralForCausalLM"
    x = torch.randint(0, 97, (2, 16))
    with torch.no_grad():
        assert torch.allclose(hf(x).logits, m(x), atol=1e-5)
        assert torch.equal(load_checkpoint(tmp_path)(x), m(x))


def test_hugging_face_tokenizer_and_model_generate(tmp_path):
    transformers = pytest.importorskip("transformers")
    from herd.data import corpus
    from herd.data.tokens import EOT, PAD, save_tokenizer, special_id, train_tokenizer

    tok = train_tokenizer([d["text"] for d in corpus.python_docs_prose(50)], 300, 2, [EOT, PAD, "<|user|>",
                                                                                     "<|assistant|>", "<|end|>"])
    m = Llama(LlamaConfig(**{**CFG.__dict__, "vocab_size": tok.get_vocab_size(), "eot_id": special_id(tok, EOT),
                             "pad_id": special_id(tok, PAD)}))
    m.init_weights(0.1)
    save_checkpoint(m, tmp_path)
    save_tokenizer(tok, tmp_path)
    hf_tok = transformers.AutoTokenizer.from_pretrained(tmp_path)
    assert hf_tok("The module").input_ids == tok.encode("The module").ids
    assert hf_tok.eos_token == EOT and hf_tok.pad_token == PAD
    model = transformers.AutoModelForCausalLM.from_pretrained(tmp_path)
    out = model.generate(**hf_tok("The module", return_tensors="pt"), max_new_tokens=5, do_sample=False)
    assert out.shape[1] > len(tok.encode("The module").ids)
