"""Data sources, long-tail profiles and nuisance transforms."""
