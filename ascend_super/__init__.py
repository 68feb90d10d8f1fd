"""ascend-super: convert HuggingFace / GGUF decoder-only LLMs once into a .asw file and run them fast.

`ascend_super.convert` (the converter) and `ascend_super.runtime` (reader, native backends, generation) live in the
repository's top-level convert/ and runtime/ folders, mapped into this package.
"""

__version__ = "0.1.0"
