"""The training and evaluation engine: above the models and datasets, below the scripts."""
