"""Classifier networks: CIFAR-style ResNets, a small CNN, a cosine head."""
