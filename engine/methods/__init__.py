"""Training methods: what is trained and how one update goes, run by the one loop in ``engine.train.trainer``.

A method (solo-learn's ``BaseMethod``, timm's ``TrainingTask``) owns its module(s), its update (``train_step``:
one or several forward/backward passes, anything after the optimizer step), the number of augmented views it
needs per image, its training metrics and its checkpoint layout. The trainer owns the epochs, the learning
rate, the evaluation, the checkpoints and the logs. A new method is one file: subclass ``Method`` and register
it in ``METHODS``.
"""
from registry import Registry

from engine.methods.base import Method
from engine.methods.classification import Classification, backbone_batchnorms
from engine.methods.moco import MoCoMethod
from engine.methods.rotation import ROTATIONS, RotationPrediction, rotation_labels

METHODS = Registry("method")
METHODS.register("classification", Classification)
METHODS.register("rotation", RotationPrediction)
METHODS.register("moco", MoCoMethod)

__all__ = ["METHODS", "Method", "Classification", "RotationPrediction", "MoCoMethod", "ROTATIONS",
           "rotation_labels", "backbone_batchnorms"]
