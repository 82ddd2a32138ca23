"""Pseudo-labelling as a tracked step: an ensemble version labels the unlabelled test tiles, the next round
trains on the training tiles plus those labels.

``confidence`` (which tiles are kept, pure), ``labels`` (fold k's labels from fold k's members, with fold k's
validation tiles hidden from the mosaic rules), ``source`` (the ensemble version and how it made its masks, read
from the registry), ``round`` (``salt-exp pseudo``: the pseudo run, then ``salt-exp cv`` of the round). Each fold's
rules are also audited on its validation tiles, where the truth is known (``confidence.audit``: logged with the
labels, or alone with ``salt-exp pseudo --audit``).
"""

from salt_exp.pseudo.round import PseudoOutcome, PseudoRequest, audit_pseudo, round_study, run_pseudo

__all__ = ["PseudoOutcome", "PseudoRequest", "audit_pseudo", "round_study", "run_pseudo"]
