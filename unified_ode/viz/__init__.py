"""Figures: point clouds with field lines (:mod:`.points`) and image grids (:mod:`.images`).

Imported lazily by callers (matplotlib is heavy); nothing here is needed for training itself.
"""
