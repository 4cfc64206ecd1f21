"""Post-training: the chat format, sampling, preference pairs, reward and DPO losses, scoring."""
