"""Datasets sdkit can write itself: `shapes` is the synthetic shapes world (see `sdkit.data.shapes`)."""
