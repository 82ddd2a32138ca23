"""Pseudo-labelling as a tracked step: an ensemble version labels the unlabelled test tiles, the next round
trains on the training tiles plus those labels.

``confidence`` (which tiles are kept, pure), ``labels`` (fold k's labels from fold k's members, with fold k's
validation tiles hidden from the mosaic rules), ``source`` (the ensemble version and how it made its masks, read
from the registry), ``round`` (``salt-exp pseudo``: the pseudo run, then ``salt-exp cv`` of the round).
"""

from salt_exp.pseudo.round import PseudoOutcome, PseudoRequest, round_study, run_pseudo

__all__ = ["PseudoOutcome", "PseudoRequest", "round_study", "run_pseudo"]
