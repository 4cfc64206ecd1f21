"""Training: the shared loop with exact resume, LM data and losses, schedules, precision, DDP."""
