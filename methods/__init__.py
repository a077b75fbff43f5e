"""Samplers built on normalizing flows, behind one interface (:class:`methods.base.Sampler`)."""

from methods import biflow, jacobi, score_denoise, tarflow  # noqa: F401  (registers the samplers)
from methods.registry import get, label, names, register

__all__ = ["get", "label", "names", "register"]
