"""Datasets: AnomalyCLIP-style meta.json loading, meta.json generators and synthetic data."""
