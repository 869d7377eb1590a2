"""Hydra configs, shipped inside the package so installed entry points find them."""
