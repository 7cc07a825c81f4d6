"""Losses and helper modules the trainers share (logit KD, feature KD, CKA, projectors)."""
