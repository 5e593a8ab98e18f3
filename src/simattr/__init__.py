"""simattr: similarity-based data attribution and its counterfactual evaluation."""

__version__ = "0.1.0"
