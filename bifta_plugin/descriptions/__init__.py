"""Class descriptions: files, LLM generation, the HTTP client (torch-free)."""
