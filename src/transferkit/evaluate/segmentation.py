"""Overlap measures of segmentation masks: Dice and IoU (Jaccard), per image and their mean.

Per image and foreground class c: Dice = 2|P∩T| / (|P|+|T|), IoU = |P∩T| / |P∪T|, where P
and T are the predicted and true pixels of class c. An image's score is the mean over the
foreground classes (c ≥ 1) present in its truth or its prediction; an image where both
are background only scores 1 (nothing to find, nothing found). A data set's score is the
mean over its images, each image counting once whatever its size (as PH2 papers report).
"""

from __future__ import annotations

import numpy as np


def dice_iou(truth: np.ndarray, predicted: np.ndarray, n_classes: int = 2) -> tuple[float, float]:
    """(Dice, IoU) of one image's class-index masks of the same shape."""
    truth, predicted = np.asarray(truth), np.asarray(predicted)
    if truth.shape != predicted.shape:
        raise ValueError(f"masks of shapes {truth.shape} and {predicted.shape} cannot be compared")
    dices, ious = [], []
    for c in range(1, n_classes):
        t, p = truth == c, predicted == c
        union = int(np.logical_or(t, p).sum())
        if union == 0:
            continue  # class absent from both: neither a hit nor a miss
        overlap = int(np.logical_and(t, p).sum())
        dices.append(2 * overlap / (int(t.sum()) + int(p.sum())))
        ious.append(overlap / union)
    if not dices:
        return 1.0, 1.0
    return float(np.mean(dices)), float(np.mean(ious))


def per_image_dice_iou(truths, predictions, n_classes: int = 2) -> tuple[np.ndarray, np.ndarray]:
    """Arrays of each image's Dice and IoU."""
    scores = [dice_iou(t, p, n_classes) for t, p in zip(truths, predictions, strict=True)]
    return np.array([s[0] for s in scores]), np.array([s[1] for s in scores])


def mean_dice_iou(truths, predictions, n_classes: int = 2) -> tuple[float, float]:
    """Mean Dice and mean IoU over images."""
    dice, iou = per_image_dice_iou(truths, predictions, n_classes)
    return float(dice.mean()), float(iou.mean())
