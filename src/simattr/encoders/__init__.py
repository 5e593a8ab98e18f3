"""Encoders: images -> feature vectors, the space in which training images are compared with test images.

    pixels      flattened pixels standardised with the train mean/std (no network, nothing learned but the scaling)
    simclr      a small conv net (arch small) or a CIFAR-stem ResNet-18 (arch resnet18, 512-d features) trained
                self-supervised (SimCLR, NT-Xent) on the train images only; labels unused
    supervised  the same conv net trained as a classifier with cross-entropy; features = penultimate layer
    resnet      a torchvision ResNet-18/50 from a local checkpoint (MoCo v2/v3, SimCLR/solo-learn, lightly or
                torchvision layout; see simattr.backbones), head dropped: nothing is trained

One class per kind (Pixels, SimCLR, Supervised, ResNet); KINDS, name -> class, is the one list of the kinds
(config.FEATURE_ENCODER_STATE names them without importing torch; the two must agree). An encoder is made by its
class's `fit` on the train images (ResNet:
`from_checkpoint`, nothing is trained) or by `from_state` from a saved state; either way what it needs to encode
is made ready once (the network built, weights loaded, moved to the device: CUDA when there is one, see accel),
and `encode` then runs on batch after batch.

A state (`state_dict()`, written by `save`) is a plain dict of python values and torch tensors (loadable with
`torch.load(weights_only=True)`) holding "encoder", "params", "input_shape", "seed" and the kind's own entries
(Encoder.state_keys); entries of other names (the embed stage's "settings") are kept in `meta` and written back.
For the networks the SimCLR projection head / the classifier's last layer are dropped: only the backbone is
stored, and the features are the backbone's representation. Training runs on CUDA when present (its rule asks
for a GPU on a cluster), else on the CPU; augmentations are drawn and applied on the CPU (digits: shifts,
rotations, erasing, ink jitter; RGB images such as CIFAR-10: SimCLR's resized crops, flips, colour jitter,
grayscale). On the CPU the same seed and params give bit-identical features on the same machine and torch thread
count (a different thread count may change the last bits).

torch is imported inside the functions, so importing this module is cheap.

By role: base (the Encoder base class, checks, training helpers and the registry: KINDS, get, read_state), kinds
(the four classes, each joining KINDS with @register); this module gathers them.
"""
from __future__ import annotations

from .base import KINDS, PIXEL_STD_FLOOR, SIMCLR_ARCHS, Encoder, get, read_state
from .kinds import Pixels, ResNet, SimCLR, Supervised

__all__ = ["KINDS", "Encoder", "Pixels", "SimCLR", "Supervised", "ResNet", "get", "read_state", "SIMCLR_ARCHS",
           "PIXEL_STD_FLOOR"]
