"""Image files as training batches, tolerant of files that cannot be decoded.

A corrupt JPEG must not kill a DataLoader worker (and with it the whole run), and a
warning raised inside a worker process never reaches the user. So a worker returns a
marker for an unreadable file, the collate function drops it, and the batch carries the
paths it dropped back to the main process, where they are reported.
"""

from __future__ import annotations

import os

import torch
from torch.utils.data import DataLoader, Dataset

from transferkit.data.images import load_image
from transferkit.errors import ImageDecodeError


class ImageFiles(Dataset):
    """``(tensor or None, label, path)`` per file; ``None`` when the file is unreadable."""

    def __init__(self, paths, labels, transform):
        self.paths = [str(p) for p in paths]
        self.labels = [int(label) for label in labels] if labels is not None else [-1] * len(self.paths)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int):
        path = self.paths[index]
        try:
            image = load_image(path)
        except ImageDecodeError:
            return None, self.labels[index], path
        return self.transform(image), self.labels[index], path


def collate_readable(items):
    """Stack the readable items: ``(images, labels, unreadable_paths, positions)``.

    ``positions`` are the indices within the batch of the images kept, so a caller that
    predicts can tell which input each output belongs to.
    """
    kept = [(i, image, label) for i, (image, label, _) in enumerate(items) if image is not None]
    bad = [path for image, _, path in items if image is None]
    if not kept:
        return torch.empty(0), torch.empty(0, dtype=torch.long), bad, torch.empty(0, dtype=torch.long)
    positions, images, labels = zip(*kept)
    return (torch.stack(images), torch.tensor(labels, dtype=torch.long), bad,
            torch.tensor(positions, dtype=torch.long))


def default_workers(num_workers: int | None) -> int:
    """``None`` → one worker per spare core (at most 8): decoding overlaps the compute."""
    if num_workers is not None:
        return int(num_workers)
    return max(1, min(8, (os.cpu_count() or 2) - 1))


def image_loader(paths, labels, transform, batch_size: int, shuffle: bool,
                 num_workers: int | None = None) -> DataLoader:
    dataset = ImageFiles(paths, labels, transform)
    workers = default_workers(num_workers)
    # A training batch of one image breaks BatchNorm in train mode: drop a last batch of 1.
    drop_last = shuffle and len(dataset) > batch_size and len(dataset) % batch_size == 1
    # Non-persistent workers: each epoch's workers are seeded from the (checkpointed)
    # torch RNG, so a resumed run sees the same augmentations as an uninterrupted one.
    return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, num_workers=workers,
                      collate_fn=collate_readable, drop_last=drop_last,
                      pin_memory=torch.cuda.is_available(), persistent_workers=False)
