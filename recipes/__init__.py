"""Training recipes of hf_semscale (run as scripts: ``python recipes/train_image.py <config.yaml> [--key value ...]``)."""
