"""Data layer: Kaggle-layout reader and validator, RLE, synthetic generator, folds."""
