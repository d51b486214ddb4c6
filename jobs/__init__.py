"""Job kinds (chat, embeddings, token counts) and the readers of job files."""
