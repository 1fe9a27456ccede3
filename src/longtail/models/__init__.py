"""Backbones and the classifier head; ``build_model`` is the factory."""

from longtail.models.backbones import BACKBONES, Backbone, build_backbone
from longtail.models.classifier import Classifier, build_model

__all__ = ["BACKBONES", "Backbone", "Classifier", "build_backbone", "build_model"]
