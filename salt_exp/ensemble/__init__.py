"""Ensembling and mosaic-scale post-processing: the mosaic index, the jigsaw solver and the neighbour rules."""
