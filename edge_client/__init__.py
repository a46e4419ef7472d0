"""The edge side: a GGUF draft on llama.cpp, the speculative loop, and the ``edgespec`` CLI."""
