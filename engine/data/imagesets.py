"""In-memory image data sets, torchvision style: the arrays every in-memory DatasetSpec builds (engine/data/datasets.py).

``.data`` is uint8 (N, H, W, 3), ``.targets`` a list of int, so one object serves both loaders: the arrays go to
the device for ``--loader device``, and ``transform`` (PIL) is set for ``--loader torch``.
"""
from __future__ import annotations

import numpy as np
from PIL import Image
from torch.utils.data import Dataset


class ImageArrayDataset(Dataset):
    """In-memory images: ``.data`` uint8 (N, H, W, 3) HWC, ``.targets`` list of int, ``.classes``,
    ``.num_classes``, ``.indices`` (the images' indices into the split they come from, when known); items are
    (transform(PIL image), target_transform(target))."""

    def __init__(self, data, targets, classes, transform=None, target_transform=None, indices=None):
        self.data = np.ascontiguousarray(data, dtype=np.uint8)
        self.targets = np.asarray(targets, np.int64).tolist()
        self.classes = list(classes)
        self.num_classes = len(self.classes)
        self.transform = transform
        self.target_transform = target_transform
        self.indices = None if indices is None else np.asarray(indices, np.int64)

    def __len__(self):
        return len(self.targets)

    def __getitem__(self, index):
        img, target = Image.fromarray(self.data[index]), self.targets[index]
        if self.transform is not None:
            img = self.transform(img)
        if self.target_transform is not None:
            target = self.target_transform(target)
        return img, target

    def get_cls_num_list(self):
        """Number of samples per class, index = label."""
        return np.bincount(self.targets, minlength=self.num_classes).tolist()


class SemiSupervisedImageDataset(ImageArrayDataset):
    """Labeled long-tailed samples (true labels) followed by unlabeled samples (pseudo-labels)
    (Yang & Xu 2020; docs/protocols.md#unlabeled-set); ``DatasetSpec.semi_parts`` draws them.

    ``get_cls_num_list()`` = labeled counts + pseudo-label counts. Attributes: ``labeled_indices`` (into the
    training split), ``unlabeled_indices`` (into the pool), ``num_labeled``. A test split is all labeled.
    """

    def __init__(self, data, targets, classes, labeled_indices, unlabeled_indices, transform=None,
                 target_transform=None):
        super().__init__(data, targets, classes, transform, target_transform)
        self.labeled_indices = labeled_indices
        self.unlabeled_indices = unlabeled_indices
        self.num_labeled = len(labeled_indices)
