"""Sweep layer: sweep files -> Ray Tune. The only package that imports ray."""
