"""What every published model (the Hugging Face export, MLflow's logged models) shares: its
generation defaults and the example of its signature and model card. No imports, so the MLflow
registry can use it without depending on the model's code."""

# The generation params a policy or base model takes at predict time (MLflow's served models), with
# their defaults: greedy, as generation_config.json says too.
GENERATION_PARAMS = {"max_new_tokens": 64, "temperature": 0.0, "top_k": 0, "seed": 0}
# The example of the logged models' signatures and of the model cards.
EXAMPLE_QUESTION = "Ava has 3 apples and buys 4 more. How many apples does Ava have?"
EXAMPLE_ANSWER = "Ava has 3 + 4 = 7 apples. The answer is 7."
