"""Image data for the vision experiments.

:mod:`.datasets`: the offline datasets and image folders; :mod:`.clip`: the adapter for a real CLIP image tower.
The models themselves are in :mod:`tvtheory.models`.
"""
