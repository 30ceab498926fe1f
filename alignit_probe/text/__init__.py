"""Text: prompts as text before any tokenizer (``prompt_text``), concepts in prompts and tokenization with role
alignment (``concepts``, ``tables``), the text encoder's stages (``encoder``) and learned-embedding diagnostics
(``embeddings``)."""
