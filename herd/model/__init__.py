"""The model: a Llama-style decoder (dense or mixture of experts) and its fused output loss."""
