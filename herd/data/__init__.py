"""Data: the built-in corpus, reading and writing records, the corpus filter, the tokenizer."""
