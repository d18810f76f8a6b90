"""fringelive.training: networks, datasets, the published training recipe, fine-tuning and evaluation."""
