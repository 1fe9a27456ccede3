"""Backbones and the classifier head; ``build_model`` is the factory."""

from longtail.models.backbones import BACKBONES, Backbone, CifarResNet, build_backbone
from longtail.models.classifier import Classifier, build_model
from longtail.models.weights import load_weights

__all__ = ["BACKBONES", "Backbone", "CifarResNet", "Classifier", "build_backbone", "build_model",
           "load_weights"]
