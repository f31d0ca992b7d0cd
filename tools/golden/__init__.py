"""Golden fixtures from the official FAPrompt and Bayes-PFL code (see README.md here)."""
