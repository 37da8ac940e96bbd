"""Evaluation of generated images: `scorer` reads shapes-world images back (independent of any generator)."""
