"""Models: the frozen CLIP backbone and the prompt-learning methods built on it."""
