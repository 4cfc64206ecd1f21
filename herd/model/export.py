"""The Hugging Face export: a stage's `model/` folder, loadable, promptable and runnable with
`transformers` alone, the way Herd itself runs the model.

- config.json + model.safetensors (herd/model/llama.py);
- tokenizer.json + tokenizer_config.json with Herd's chat template (herd/data/tokens.py), copied
  from the folder the stage read its tokenizer from;
- generation_config.json (causal LMs only): greedy decoding that stops where Herd's sampling stops;
- README.md: a model card generated from the stage's lineage, params and metrics.
"""

import json
import shutil
from pathlib import Path

import yaml

from herd.data.tokens import load_tokenizer
from herd.errors import HerdError
from herd.model.llama import Llama, LlamaConfig, save_checkpoint
from herd.model.published import EXAMPLE_ANSWER, EXAMPLE_QUESTION, GENERATION_PARAMS
from herd.post.chat import ChatFormat

KINDS = {"base": "base language model", "policy": "chat policy", "reward": "reward model"}
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json")
# The default answer length of Herd's exported models: that of its served ones.
MAX_NEW_TOKENS = GENERATION_PARAMS["max_new_tokens"]


def export_model(st, model: Llama, tokenizer_dir: Path, kind: str) -> Path:
    """Write `st.out / "model"` for a model of `kind` (base, policy or reward) and return it."""
    folder = st.out / "model"
    save_checkpoint(model, folder)
    st.manifest["model_kind"] = kind  # what reads it next: a policy answers in the chat format, a base does not
    for name in TOKENIZER_FILES:
        shutil.copy(tokenizer_dir / name, folder / name)
    fmt = ChatFormat(load_tokenizer(folder))
    check_special_ids(model.cfg, fmt)
    if kind != "reward":
        write_generation_config(folder, fmt)
    (folder / "README.md").write_text(model_card(st, model, folder, kind))
    return folder


def check_special_ids(cfg: LlamaConfig, fmt: ChatFormat) -> None:
    """config.json takes its token ids from the model's config: a reward model loaded in
    `transformers` pools at the last token that is not pad_token_id, so a pad id that is not the
    tokenizer's would silently score the wrong token."""
    if (cfg.pad_id, cfg.eot_id) != (fmt.pad, fmt.eot):
        raise HerdError(f"the model's pad/end-of-text ids ({cfg.pad_id}, {cfg.eot_id}) are not its tokenizer's "
                        f"({fmt.pad}, {fmt.eot}): the model was built with another tokenizer")


def write_generation_config(folder: Path, fmt: ChatFormat) -> None:
    """`generate()` defaults equal to Herd's evaluation: greedy, each answer ends at its first stop
    token (kept in the output, as herd/post/generate.py keeps it)."""
    config = {
        # An unprompted generation starts where a document starts in the token streams: after <|endoftext|>.
        "bos_token_id": fmt.eot,
        "eos_token_id": list(fmt.stops),
        "pad_token_id": fmt.pad,
        "do_sample": False,
        "max_new_tokens": MAX_NEW_TOKENS,
    }
    (folder / "generation_config.json").write_text(json.dumps(config, indent=2) + "\n")


def model_card(st, model: Llama, folder: Path, kind: str) -> str:
    architecture = json.loads((folder / "config.json").read_text())["architectures"][0]
    sections = [summary(st.name, model, architecture, kind), training(st), evaluation(st.metrics),
                usage(st.name, kind)]
    return "\n\n".join(sections) + "\n"


def summary(stage: str, model: Llama, architecture: str, kind: str) -> str:
    cfg = model.cfg
    experts = f", {cfg.n_experts} experts ({cfg.experts_per_token} per token)" if cfg.n_experts else ""
    return (f"# {stage}: Herd {KINDS[kind]}\n\n"
            f"A `{architecture}` with {model.num_params():,} parameters ({cfg.n_layers} layers, width {cfg.dim}, "
            f"{cfg.n_heads} attention heads sharing {cfg.n_kv_heads} key-value heads, feed-forward {cfg.ffn_dim}"
            f"{experts}; vocabulary {cfg.vocab_size}; context {cfg.max_seq_len} tokens, RoPE base {cfg.rope_base:g}), "
            f"made by the `{stage}` stage of Herd. {PURPOSE[kind]}")


def training(st) -> str:
    """The stages behind the model, each after the stages it read, and the params of its own stage."""
    lines = ["## Training", "", "Made by these stages, each after those it read (MLflow run, output content hash):", ""]
    for stage, record in st.lineage().items():
        sources = f", sources: {', '.join(record['sources'])}" if "sources" in record else ""
        lines.append(f"- `{stage}`: run `{record['run_id']}`, sha256 `{record['output_sha256'][:16]}`{sources}")
    lines.append(f"- `{st.name}`: run `{st.run_id}` (this model)")
    params = yaml.safe_dump(st.recipe_params, sort_keys=False).strip()
    return "\n".join([*lines, "", f"Params of `{st.name}`:", "", "```yaml", params, "```"])


def evaluation(metrics: dict) -> str:
    if not metrics:
        return "## Evaluation\n\nThe stage measured nothing when it saved the model."
    rows = [f"| `{k}` | {json.dumps(v)} |" for k, v in metrics.items()]
    return "\n".join(["## Evaluation", "", "Measured by the stage when it saved the model:", "",
                      "| metric | value |", "|---|---|", *rows])


def usage(stage: str, kind: str) -> str:
    head = ["## Use with transformers", "", USAGE[kind], "", "```python"]
    return "\n".join([*head, SNIPPETS[kind].format(folder=f"artifacts/{stage}/model", question=EXAMPLE_QUESTION,
                                                   answer=EXAMPLE_ANSWER).strip(), "```"])


# The card's text, by kind of model.
PURPOSE = {
    "base": "It was trained on plain documents, each ending with `<|endoftext|>`; it has not seen the chat format, "
            "so Herd prompts it as in pretraining (`Question: ...\\nAnswer:`).",
    "policy": "It was fine-tuned on Herd's chat format, `<|user|>` question `<|assistant|>` answer `<|end|>`, "
              "which the tokenizer's chat template writes.",
    "reward": "It scores a response to a prompt with one scalar (Bradley-Terry: the higher, the more preferred).",
}

USAGE = {
    "base": "Greedy decoding by default (`generation_config.json`), ending at `<|endoftext|>` or `<|end|>` as "
            "Herd's sampling does. The tokenizer's chat template is there for the policies fine-tuned from this model.",
    "policy": "Prompt with the chat template and a generation prompt (`<|user|>` question `<|assistant|>`; no "
              "system message: the template refuses one). Greedy decoding by default (`generation_config.json`), "
              "ending at `<|end|>` or `<|endoftext|>`, which stays in the output, as in Herd's sampling.",
    "reward": "Input: the conversation (one user message, one assistant message) rendered with the chat template "
              "without a generation prompt, `<|user|>` prompt `<|assistant|>` response `<|end|>`; the score is the "
              "logit at the closing `<|end|>`. A batch may be padded with `<|pad|>` (config.json's "
              "`pad_token_id`): each row is scored at its last token that is not padding.",
}

SNIPPETS = {
    "base": """
from transformers import AutoModelForCausalLM, AutoTokenizer

model_dir = "{folder}"  # this folder
tokenizer = AutoTokenizer.from_pretrained(model_dir)
model = AutoModelForCausalLM.from_pretrained(model_dir)
inputs = tokenizer("Question: {question}\\nAnswer:", return_tensors="pt")
output = model.generate(**inputs)
print(tokenizer.decode(output[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True))
""",
    "policy": """
from transformers import AutoModelForCausalLM, AutoTokenizer

model_dir = "{folder}"  # this folder
tokenizer = AutoTokenizer.from_pretrained(model_dir)
model = AutoModelForCausalLM.from_pretrained(model_dir)
messages = [{{"role": "user", "content": "{question}"}}]
inputs = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_dict=True, return_tensors="pt")
output = model.generate(**inputs)
print(tokenizer.decode(output[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True))
""",
    "reward": """
import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer

model_dir = "{folder}"  # this folder
tokenizer = AutoTokenizer.from_pretrained(model_dir)
model = AutoModelForSequenceClassification.from_pretrained(model_dir)
conversation = [{{"role": "user", "content": "{question}"}},
                {{"role": "assistant", "content": "{answer}"}}]
ids = tokenizer.apply_chat_template(conversation, return_dict=True, return_tensors="pt")["input_ids"]
with torch.no_grad():
    reward = model(ids).logits[0, 0].item()  # read at the closing <|end|>
print(reward)
""",
}
