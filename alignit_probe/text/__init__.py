"""Text: concepts in prompts, tokenization with role alignment (``concepts``, ``tables``), the text encoder's stages
(``encoder``) and learned-embedding diagnostics (``embeddings``)."""
