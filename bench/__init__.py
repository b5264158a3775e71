"""bench: train defended image classifiers and benchmark their adversarial robustness."""

__version__ = "0.1.0"
