"""Classifier training: the loop, the schedule, device resolution."""
