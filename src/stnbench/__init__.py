"""stnbench: config-driven distorted-MNIST benchmarks of Spatial Transformer Networks."""

from stnbench.resolvers import register as _register_resolvers

_register_resolvers()  # the configs use ${stnbench.*:...} resolvers
