"""The shipped pretrained weights, installed as package data of ``tvtheory.small_models``."""
