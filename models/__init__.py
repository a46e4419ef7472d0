"""Model files for edgespec: where the draft GGUF lives, how the target snapshot is made.

``paths`` locates and derives the llama.cpp draft models (no torch needed), ``convert``
turns a GGUF into a float32 transformers snapshot for the verify daemon, and
``fingerprint`` lets both ends prove they share one tokenizer before any ids cross the wire.
"""
