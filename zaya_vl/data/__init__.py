"""Training and evaluation data. `synthetic`: deterministic synthetic document-QA generator."""

__all__ = ["Example", "generate_dataset", "iter_text", "render_example"]


def __getattr__(name: str):
    # Lazy, so `python -m zaya_vl.data.synthetic` does not import the module twice (runpy warning).
    if name in __all__:
        from . import synthetic

        return getattr(synthetic, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
