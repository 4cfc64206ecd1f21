"""The Hugging Face export: each model folder, used with `transformers` alone, prompts, generates
and scores exactly as Herd does (float32 on CPU)."""

import importlib
import json

import pytest
import torch
from omegaconf import OmegaConf

from herd.data import corpus
from herd.data.tokens import ASSISTANT, END, EOT, PAD, SYSTEM, USER, save_tokenizer, train_tokenizer
from herd.errors import HerdError
from herd.model.export import EXAMPLE_ANSWER, EXAMPLE_QUESTION, MAX_NEW_TOKENS, export_model
from herd.model.llama import Llama, LlamaConfig, load_checkpoint
from herd.post.chat import ChatFormat
from herd.post.generate import greedy
from herd.post.scoring import score_responses
from herd.stage import StageRun
from herd.training.lm_stage import save_model

transformers = pytest.importorskip("transformers")

QUESTIONS = ["What is 12 + 30?", " leading space", "Punctuation: (a, b); [c]! {d}? \"e\" 'f' -- 3.5%",
             "Ünïcödé: café, 東京, 🚀", "two\nlines\tand a tab ", ""]
LINEAGE = {"corpus": {"run_id": "run-corpus", "output_sha256": "c0" * 32, "sources": ["builtin"]},
           "tokenizer": {"run_id": "run-tokenizer", "output_sha256": "70" * 32}}


@pytest.fixture(scope="module")
def tok():
    texts = [d["text"] for d in [*corpus.python_docs_prose(50), *corpus.math_problems(50, 0, "train")]]
    return train_tokenizer(texts, 400, 2, [EOT, PAD, SYSTEM, USER, ASSISTANT, END])


@pytest.fixture
def tokens_dir(tmp_path, tok):
    save_tokenizer(tok, tmp_path / "tokenizer")
    return tmp_path / "tokenizer"


def stage(tmp_path, name: str, roles: dict[str, str], **params) -> StageRun:
    """A stage run reading upstream outputs (role -> stage) whose manifests chain back to the corpus."""
    inputs = {}
    for role, upstream in roles.items():
        inputs[role] = tmp_path / "artifacts" / upstream
        inputs[role].mkdir(parents=True, exist_ok=True)
        manifest = {"stage": upstream, "mlflow_run_id": f"run-{upstream}", "output_sha256": "ab" * 32,
                    "lineage": LINEAGE}
        (inputs[role] / "manifest.json").write_text(json.dumps(manifest))
    cfg = OmegaConf.create({"seed": 0, name: params, "runtime": {"train": {"log_every": 1, "checkpoints": ""}}})
    kind = importlib.import_module(f"tasks.{name}").SPEC.model  # what the stage declares it makes
    return StageRun(name, cfg, tmp_path, tmp_path / "artifacts" / f".{name}.tmp", inputs, {}, f"run-{name}", kind)


def tiny(tok, head: str = "lm", tie: bool = True) -> Llama:
    cfg = LlamaConfig(vocab_size=tok.get_vocab_size(), dim=32, n_layers=2, n_heads=4, n_kv_heads=2, ffn_dim=64,
                      max_seq_len=128, eot_id=tok.token_to_id(EOT), pad_id=tok.token_to_id(PAD), tie_embeddings=tie)
    model = Llama(cfg, head)
    model.init_weights(0.1, torch.Generator().manual_seed(0))
    return model.eval()


def policy_folder(tmp_path, model, tokens_dir):
    """Saved as sft saves its model."""
    st = stage(tmp_path, "sft", {"base": "anneal", "samples": "rejection_sample"}, steps=3, lr=0.001)
    st.metrics.update({"final_loss": 1.25, "examples": 40})
    save_model(st, model, tokens_dir)
    return st.out / "model"


def card_snippet(folder, stage_name: str) -> str:
    """The card's python code, pointed at `folder`."""
    code = (folder / "README.md").read_text().split("```python\n")[1].split("```")[0]
    return code.replace(f'"artifacts/{stage_name}/model"', repr(str(folder)))


def with_stop(model, fmt, question: str, stop: int) -> Llama:
    """Make `stop` the greedy answer's fourth token: its output row becomes 1.1 times the row of the
    token the model would answer there (the largest logit, positive), so the stop wins there."""
    with torch.no_grad():
        model.lm_head.weight[list(fmt.stops)] = 0.0  # no stop before the fourth token
        free = greedy(model, [fmt.prompt(question)], 4, (), precision="fp32")[0]
        model.lm_head.weight[stop] = 1.1 * model.lm_head.weight[free[3]]
    return model


@pytest.mark.parametrize("question", QUESTIONS)
def test_chat_template_gives_herd_prompt_ids(tmp_path, tok, tokens_dir, question):
    hf_tok = transformers.AutoTokenizer.from_pretrained(policy_folder(tmp_path, tiny(tok), tokens_dir))
    fmt = ChatFormat(tok)
    messages = [{"role": "user", "content": question}]
    ids = hf_tok.apply_chat_template(messages, add_generation_prompt=True, return_dict=True)["input_ids"]
    assert ids == fmt.prompt(question)
    turns = [*messages, {"role": "assistant", "content": question}, {"role": "user", "content": "And 2?"}]
    ids = hf_tok.apply_chat_template(turns, add_generation_prompt=True, return_dict=True)["input_ids"]
    assert ids == fmt.prompt(question) + fmt.response(question) + fmt.prompt("And 2?")
    assert hf_tok.decode(tok.encode(question).ids) == tok.decode(tok.encode(question).ids)


@pytest.mark.parametrize("stop_token", [END, EOT])
def test_generate_with_saved_config_matches_herd_greedy_sampling(tmp_path, tok, tokens_dir, stop_token):
    fmt = ChatFormat(tok)
    question = QUESTIONS[0]
    # Untied: a tiny random model with tied embeddings echoes its last input token forever.
    model = with_stop(tiny(tok, tie=False), fmt, question, tok.token_to_id(stop_token))
    folder = policy_folder(tmp_path, model, tokens_dir)
    herd = greedy(load_checkpoint(folder), [fmt.prompt(question)], MAX_NEW_TOKENS, fmt.stops, precision="fp32")[0]
    assert len(herd) == 4 and herd[-1] == tok.token_to_id(stop_token)  # the stop was reached, not the length

    hf_tok = transformers.AutoTokenizer.from_pretrained(folder)
    hf = transformers.AutoModelForCausalLM.from_pretrained(folder).eval()
    assert hf.generation_config.eos_token_id == list(fmt.stops) and not hf.generation_config.do_sample
    inputs = hf_tok.apply_chat_template([{"role": "user", "content": question}], add_generation_prompt=True,
                                        return_dict=True, return_tensors="pt")
    out = hf.generate(**inputs)  # only what generation_config.json says
    assert out[0, inputs["input_ids"].shape[1]:].tolist() == herd


def test_reward_model_scores_as_herd(tmp_path, tok, tokens_dir):
    fmt = ChatFormat(tok)
    base = policy_folder(tmp_path, tiny(tok), tokens_dir)
    st = stage(tmp_path, "reward", {"base": "anneal", "filtered": "filter"}, steps=2)
    st.metrics["heldout_accuracy"] = 0.5
    folder = export_model(st, tiny(tok, head="score"), base, "reward")
    assert not (folder / "generation_config.json").exists()
    pairs = [(q, a) for q, a in zip(QUESTIONS, [*QUESTIONS[1:], "42"], strict=True)]
    pairs.append((EXAMPLE_QUESTION, EXAMPLE_ANSWER))
    herd = torch.tensor(score_responses(load_checkpoint(folder), fmt, pairs, precision="fp32"))
    assert herd.std() > 0  # a score head that reads the conversation

    hf_tok = transformers.AutoTokenizer.from_pretrained(folder)
    hf = transformers.AutoModelForSequenceClassification.from_pretrained(folder).eval()
    rows = [hf_tok.apply_chat_template([{"role": "user", "content": p}, {"role": "assistant", "content": r}],
                                       return_dict=True)["input_ids"] for p, r in pairs]
    width = max(map(len, rows))
    batch = torch.tensor([row + [fmt.pad] * (width - len(row)) for row in rows])  # right-padded, as Herd pads
    with torch.no_grad():
        assert torch.allclose(hf(batch).logits[:, 0], herd, atol=1e-5)
    snippet = {}
    exec(card_snippet(folder, "reward"), snippet)  # the card's own instructions, as a user would run them
    assert snippet["reward"] == pytest.approx(herd[-1].item(), abs=1e-5)


def test_system_message_renders_as_herd_and_a_tokenizer_without_one_refuses_it(tmp_path, tok, tokens_dir):
    jinja2 = pytest.importorskip("jinja2")
    hf_tok = transformers.AutoTokenizer.from_pretrained(policy_folder(tmp_path, tiny(tok), tokens_dir))
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
    ids = hf_tok.apply_chat_template(messages, add_generation_prompt=True, return_dict=True)["input_ids"]
    assert ids == ChatFormat(tok).prompt(messages) and ids[0] == tok.token_to_id(SYSTEM)
    no_system = train_tokenizer(QUESTIONS * 5, 300, 1, [EOT, PAD, USER, ASSISTANT, END])
    save_tokenizer(no_system, tmp_path / "plain")
    with pytest.raises(jinja2.TemplateError, match="no <\\|system\\|> token"):
        transformers.AutoTokenizer.from_pretrained(tmp_path / "plain").apply_chat_template(messages)
    with pytest.raises(HerdError, match="no special token <\\|system\\|>"):
        ChatFormat(no_system).prompt(messages)


def test_generation_config_and_model_card(tmp_path, tok, tokens_dir):
    model = tiny(tok)
    folder = policy_folder(tmp_path, model, tokens_dir)
    assert json.loads((folder / "generation_config.json").read_text()) == {
        "bos_token_id": tok.token_to_id(EOT), "eos_token_id": [tok.token_to_id(END), tok.token_to_id(EOT)],
        "pad_token_id": tok.token_to_id(PAD), "do_sample": False, "max_new_tokens": MAX_NEW_TOKENS}
    assert json.loads((folder / "config.json").read_text())["pad_token_id"] == tok.token_to_id(PAD)
    card = (folder / "README.md").read_text()
    assert card.startswith("# sft: Herd chat policy")
    for fact in ("`LlamaForCausalLM`", f"{model.num_params():,} parameters", "`corpus`: run `run-corpus`",
                 "sources: builtin", "`anneal`: run `run-anneal`", "`sft`: run `run-sft`", "steps: 3",
                 "| `final_loss` | 1.25 |", "| `examples` | 40 |", "apply_chat_template"):
        assert fact in card
    snippet = {}
    exec(card_snippet(folder, "sft"), snippet)
    assert snippet["output"].shape[1] > snippet["inputs"]["input_ids"].shape[1]

    base = stage(tmp_path, "pretrain", {"tokenizer": "tokenizer"}, steps=5)
    save_model(base, tiny(tok), tokens_dir)
    card = (base.out / "model" / "README.md").read_text()
    assert card.startswith("# pretrain: Herd base language model") and "Question: " in card
    assert "The stage measured nothing" in card


def test_export_refuses_a_model_built_for_another_tokenizer(tmp_path, tok, tokens_dir):
    model = tiny(tok)
    model.cfg.pad_id = tok.token_to_id(USER)
    with pytest.raises(HerdError, match="pad/end-of-text ids"):
        export_model(stage(tmp_path, "sft", {"base": "anneal"}), model, tokens_dir, "policy")
