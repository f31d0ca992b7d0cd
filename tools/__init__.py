"""Developer tools (golden-fixture generation, mutation check); not needed to run the project."""
