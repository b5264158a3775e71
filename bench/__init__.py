"""bench: train defended image classifiers and benchmark their adversarial robustness."""

__version__ = "0.1.0"

__all__ = ["evaluate_model"]


def __getattr__(name: str) -> object:
    """``bench.evaluate_model`` without importing torch at ``import bench``."""
    if name == "evaluate_model":
        from bench.api import evaluate_model  # here: `import bench` must not import torch

        return evaluate_model
    raise AttributeError(f"module 'bench' has no attribute {name!r}")


def __dir__() -> list[str]:
    """The public names, for tab completion (``evaluate_model`` is loaded on first use)."""
    return sorted([*__all__, "__version__"])
