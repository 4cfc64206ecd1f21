"""The MLflow model for Herd checkpoints, defined from code (no pickles).

MLflow copies this file into every logged model; the checkpoint folder (safetensors, config and
tokenizer) travels as the model's artifact. `model_config["kind"]` says what it serves:
- policy: input a DataFrame with a `prompt` column, output the response to each in the chat format;
- base: the same for a base model, prompted as in pretraining (`Question: ...\nAnswer:`);
- reward: input `prompt` and `response` columns, output one scalar reward each.
Generation params (policy, base): max_new_tokens, temperature (0: greedy), top_k (0: off), seed.
"""

from pathlib import Path

import mlflow
import pandas as pd


class HerdModel(mlflow.pyfunc.PythonModel):
    def load_context(self, context):
        from herd.data.tokens import load_tokenizer
        from herd.model.decoding import for_decoding
        from herd.model.llama import load_checkpoint
        from herd.post.chat import ChatFormat

        folder = Path(context.artifacts["checkpoint"])
        self.kind = context.model_config["kind"]
        self.model = load_checkpoint(folder).eval()
        if self.kind != "reward":  # prepared once, not on every request
            self.model = for_decoding(self.model, "bf16")
        self.fmt = ChatFormat(load_tokenizer(folder))

    def predict(self, context, model_input, params=None):
        from herd.post.generate import generate
        from herd.post.scoring import score_responses

        prompts = _column(model_input, "prompt")
        if self.kind == "reward":
            pairs = list(zip(prompts, _column(model_input, "response"), strict=True))
            return score_responses(self.model, self.fmt, pairs)
        import torch

        from herd.model.published import GENERATION_PARAMS

        params = {**GENERATION_PARAMS, **(params or {})}
        generator = torch.Generator().manual_seed(int(params["seed"]))
        encode = self.fmt.prompt if self.kind == "policy" else self.fmt.base_prompt
        samples = generate(self.model, [encode(p) for p in prompts], int(params["max_new_tokens"]), self.fmt.stops,
                           temperature=float(params["temperature"]), top_k=int(params["top_k"]),
                           generator=generator)
        return [self.fmt.decode(s[0]) for s in samples]


def _column(frame, name: str) -> list[str]:
    if isinstance(frame, pd.DataFrame):
        if name not in frame.columns:
            raise ValueError(f"input needs a '{name}' column; got {list(frame.columns)}")
        return frame[name].astype(str).tolist()
    return [str(row[name]) for row in frame]


mlflow.models.set_model(HerdModel())
