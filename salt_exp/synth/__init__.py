"""The synthetic TGS-like dataset: a product of its own, not part of loading data.

``generate`` (the entry point, ``SynthConfig`` + ``generate_dataset``), ``geology`` (seismic
sections with salt bodies), ``labels`` (section-scale annotation and tile cutting), ``write``
(the exact Kaggle layout and formats). ``salt-exp data synth`` wraps ``generate_dataset``.
"""

from salt_exp.synth.generate import SynthConfig, generate_dataset

__all__ = ["SynthConfig", "generate_dataset"]
