"""The engine: open_clip glue, text-embedding cache, batched pipeline."""
