"""dass-distill: distil audio transformers into small state-space audio taggers."""

__version__ = "0.1.0"
