"""simattr: similarity-based data attribution and its counterfactual evaluation."""

__version__ = "0.1.0"


def __getattr__(name):
    """`simattr.Attributor` (simattr.explain), imported on first use: `import simattr` stays light."""
    if name == "Attributor":
        from .explain import Attributor

        return Attributor
    raise AttributeError(f"module 'simattr' has no attribute {name!r}")
