"""Data: the dataset registry and specs, long-tail subsets, file readers, pseudo-label files, loaders, samplers and batched augmentation."""
