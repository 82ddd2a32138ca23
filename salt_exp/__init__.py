"""salt-exp: an experiment-tracking research harness for TGS salt segmentation."""

__version__ = "0.1.0"
