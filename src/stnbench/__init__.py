"""stnbench: config-driven distorted-MNIST benchmarks of Spatial Transformer Networks."""

from stnbench.resolvers import register as _register_resolvers

_register_resolvers()  # the configs use ${stnbench.*:...} resolvers


def __getattr__(name: str):
    """``stnbench.load_model``, imported on first use: ``import stnbench`` (resolvers) stays free of torch."""
    if name == "load_model":
        from stnbench.predict import load_model

        return load_model
    raise AttributeError(f"module 'stnbench' has no attribute '{name}'")


__all__ = ["load_model"]
