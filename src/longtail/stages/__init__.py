"""The stages of the method: joint training, feature extraction, classifier re-balancing."""
