"""Training methods: what is trained and how one update goes, run by the one loop in ``engine.train.trainer``.

A method (solo-learn's ``BaseMethod``, timm's ``TrainingTask``) owns its module(s), its update (``train_step``:
one or several forward/backward passes, anything after the optimizer step), the number of augmented views it
needs per image, its training metrics and its checkpoint layout. The trainer owns the epochs, the learning
rate, the evaluation, the checkpoints and the logs. A new method is one file: subclass ``Method`` (or
``Classification``) and hand the class to ``engine.train.experiment.run_classification`` or to a ``Trainer``.
"""
from engine.methods.base import Method
from engine.methods.classification import Classification, backbone_batchnorms
from engine.methods.moco import MoCoMethod
from engine.methods.rotation import ROTATIONS, RotationPrediction, rotation_labels

__all__ = ["Method", "Classification", "RotationPrediction", "MoCoMethod", "ROTATIONS",
           "rotation_labels", "backbone_batchnorms"]
