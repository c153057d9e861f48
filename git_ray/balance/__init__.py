"""Balancing: losses, class weights and samplers."""
