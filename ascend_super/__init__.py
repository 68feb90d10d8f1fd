"""ascend-super: convert HuggingFace / GGUF decoder-only LLMs once into a .asw file and run them fast.

`ascend_super.convert` (the converter) and `ascend_super.runtime` (reader, native backends, generation) live in the
repository's top-level convert/ and runtime/ folders, mapped into this package.
"""

__version__ = "0.1.0"


def __getattr__(name: str):  # noqa: ANN202  (lazy re-exports: importing the package stays cheap)
    if name in ("Stats", "Sampling"):
        from ascend_super.runtime import generate

        return getattr(generate, name)
    raise AttributeError(f"module 'ascend_super' has no attribute {name!r}")


def load(path, backend: str = "auto", threads=None, device: int = 0, eager: bool = False,  # noqa: ANN001, ANN201
         activations: str = "f32"):
    """Open a .asw file for generation: `ascend_super.load("model.asw").generate("Hi")` yields text pieces
    (re-exported; see runtime.model.load for the arguments)."""
    from ascend_super.runtime.model import load as _load

    return _load(path, backend, threads, device, eager, activations)
