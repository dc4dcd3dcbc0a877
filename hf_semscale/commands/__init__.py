"""Subcommands of the ``hf-semscale`` console script."""
