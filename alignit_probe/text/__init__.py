"""Text: prompts as text before any tokenizer (``prompt_text``), concepts in prompts and tokenization with role
alignment (``concepts``, ``tables``), and tokens read back as text (``byte_level``). Knows no model: the text
encoders' stages are the models' (``models.encoder``, ``models.embeddings``)."""
