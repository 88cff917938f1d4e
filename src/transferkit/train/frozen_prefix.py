"""Train only the unfrozen tail of a network on cached activations of its frozen prefix.

On a CPU most of fine-tuning's time went into running the frozen early layers forward,
every epoch, on freshly augmented images, although their output for a given image and
crop never changes. Here a network is seen as a chain of feature steps (stem, stage 1,
stage 2, ..., final conv) followed by global pooling and the classifier. The prefix up to
a cut (the input of the first trainable step, or the pooled pre-logits when only the
head learns) runs once per image and *view*, through the fast extraction runtime
(:func:`transferkit.features.runtime.make_runtime`), and its outputs are cached on disk
keyed like the feature cache: file content digest + backbone identity + cut + view
policy. Training then runs only the tail from the cut on. Views: the centre crop (view
0) plus ``n_augmented`` random training crops, each drawn with an RNG seeded by the
image's digest, the view index and the policy's seed, so the same image gets the same
views in every run and a cache entry stays valid.

Reusable beyond fine-tuning (domain adaptation, self-supervised training on photos):
:class:`NetworkChain` splits a timm CNN at any step and checks, on a probe input, that
prefix + tail reproduces the network; :func:`prefix_activations` returns (and caches) a
chain's activations at given cuts for image files under a :class:`ViewPolicy`.
"""

from __future__ import annotations

import hashlib
import random
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset, Sampler

from transferkit.data.images import load_image, open_regular_file
from transferkit.errors import CacheError, ImageDecodeError
from transferkit.features.cache import (
    file_digest,
    namespace_folder,
    namespace_key,
    resolve_cache_dir,
)
from transferkit.outputs import write_bytes_atomic

# Containers whose children are the network's stages, in forward order (timm's names).
_STAGE_CONTAINERS = ("blocks", "stages", "layers", "features")
# The chain must reproduce the network to this (probe inputs are O(1), outputs O(10)).
CHAIN_TOLERANCE = 1e-3


# -- the network as a chain ---------------------------------------------------------------

def _feature_steps(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """Top-level children up to the global pooling, stage containers opened one level."""
    steps = []
    for name, child in model.named_children():
        if name == "global_pool":
            break
        if name in _STAGE_CONTAINERS and isinstance(child, nn.Sequential):
            steps += [(f"{name}.{i}", grandchild) for i, grandchild in enumerate(child)]
        else:
            steps.append((name, child))
    return steps


class Tail(nn.Module):
    """The network from a cut on: the remaining feature steps, pooling, dropout, classifier.

    Its modules are the full model's own, so training the tail trains the model.
    """

    def __init__(self, steps: list[nn.Module], pool: nn.Module | None, drop_rate: float,
                 classifier: nn.Module):
        super().__init__()
        self.steps = nn.ModuleList(steps)
        self.pool = pool
        self.drop_rate = float(drop_rate)
        self.classifier = classifier

    def forward(self, x, pre_logits: bool = False):
        """Logits, or with ``pre_logits`` the pooled features the classifier sees (timm's
        ``forward_head(..., pre_logits=True)``)."""
        for step in self.steps:
            x = step(x)
        if self.pool is not None:
            x = self.pool(x)
        if self.drop_rate > 0:  # where timm's forward_head applies the model's drop_rate
            x = F.dropout(x, p=self.drop_rate, training=self.training)
        return x if pre_logits else self.classifier(x)


class Taps(nn.Module):
    """The frozen prefix: runs the steps up to the deepest requested cut once and returns
    the activation at each cut (pooled pre-logits for the cut ``n_steps + 1``)."""

    def __init__(self, steps: list[nn.Module], pool: nn.Module, cuts: list[int]):
        super().__init__()
        self.cuts = list(cuts)
        n_steps = len(steps)
        self.steps = nn.ModuleList(steps[:min(max(cuts), n_steps)])
        self.pool = pool if max(cuts) > n_steps else None

    def forward(self, images):
        outputs = {}
        x = images
        for index, step in enumerate(self.steps):
            if index in self.cuts:
                outputs[index] = x
            x = step(x)
        outputs[len(self.steps)] = x
        if self.pool is not None:
            outputs[len(self.steps) + 1] = self.pool(x)
        return tuple(outputs[cut] for cut in self.cuts)


class NetworkChain:
    """A timm classifier as ``steps → global_pool → (dropout) → classifier``.

    Cuts are step indices: cut ``c`` is the input of step ``c`` (``0``: the image,
    ``n_steps``: the final feature map) and :attr:`pooled` (``n_steps + 1``) the pooled
    pre-logits. Build with :meth:`of`, which returns None for a network that is not
    such a chain (say a ViT, or MobileNetV3 whose head convolves after pooling): the
    decomposition is accepted only if it reproduces ``forward_features`` and the logits
    on a probe input.
    """

    def __init__(self, model: nn.Module, steps: list[tuple[str, nn.Module]],
                 shapes: list[tuple[int, ...]]):
        self.model = model
        self.step_names = [name for name, _ in steps]
        self.steps = [module for _, module in steps]
        self.shapes = shapes  # activation shape (no batch axis) at each cut 0..n_steps+1

    @property
    def n_steps(self) -> int:
        return len(self.steps)

    @property
    def pooled(self) -> int:
        return self.n_steps + 1

    @classmethod
    def of(cls, model: nn.Module, input_shape: tuple[int, int, int]) -> "NetworkChain | None":
        pool, classifier = getattr(model, "global_pool", None), _classifier(model)
        if not isinstance(pool, nn.Module) or classifier is None:
            return None
        steps = _feature_steps(model)
        covered = {f"{name}." for name, _ in steps} | {f"{_classifier_path(model)}."}
        if any(not any(p.startswith(prefix) for prefix in covered)
               for p, _ in model.named_parameters()):
            return None  # parameters outside the steps (a position embedding, a head norm)
        was_training = model.training
        model.eval()
        try:
            with torch.no_grad():
                probe = torch.randn((2, *input_shape), generator=torch.Generator().manual_seed(0))
                shapes, x = [], probe
                for _, step in steps:
                    shapes.append(tuple(x.shape[1:]))
                    x = step(x)
                shapes.append(tuple(x.shape[1:]))
                pooled = pool(x)
                shapes.append(tuple(pooled.shape[1:]))
                chain = cls(model, steps, shapes)
                expected_features = model.forward_features(probe)
                expected_logits = model(probe)
                logits = chain.tail(chain.pooled).eval()(pooled)
            if (pooled.ndim != 2 or expected_features.shape != x.shape
                    or not torch.allclose(expected_features, x, atol=CHAIN_TOLERANCE, rtol=0)
                    or not torch.allclose(expected_logits, logits, atol=CHAIN_TOLERANCE, rtol=0)):
                return None
        except Exception:  # any model this decomposition does not fit is trained as a whole
            return None
        finally:
            model.train(was_training)
        return chain

    def cut_name(self, cut: int) -> str:
        if cut == self.pooled:
            return "pooled"
        return self.step_names[cut] if cut < self.n_steps else "features"

    def cut_index(self, name: str) -> int | None:
        """The cut :meth:`cut_name` calls ``name``, or None."""
        names = [self.cut_name(cut) for cut in range(self.pooled + 1)]
        return names.index(name) if name in names else None

    def prefix_digest(self, cut: int) -> str:
        """SHA-256 of the weights and buffers before ``cut``: what its activations depend
        on besides the input, so cache entries never outlive a change to them."""
        return _steps_digest(list(zip(self.step_names, self.steps)), cut,
                             self.model.global_pool)

    def cut_for(self, trainable_params: list[str]) -> int:
        """The latest cut whose prefix holds none of ``trainable_params`` (0 when the
        first step learns: the image itself)."""
        cut = self.pooled
        for name in trainable_params:
            for index, step in enumerate(self.step_names):
                if name.startswith(step + "."):
                    cut = min(cut, index)
                    break
        return cut

    def tail(self, cut: int) -> Tail:
        steps = self.steps[cut:] if cut <= self.n_steps else []
        pool = self.model.global_pool if cut <= self.n_steps else None
        return Tail(steps, pool, getattr(self.model, "drop_rate", 0.0) or 0.0,
                    _classifier(self.model))

    def taps(self, cuts: list[int]) -> Taps:
        return Taps(self.steps, self.model.global_pool, cuts)


def _steps_digest(steps: list[tuple[str, nn.Module]], cut: int, pool: nn.Module) -> str:
    digest = hashlib.sha256()
    named = steps[:cut] + ([("global_pool", pool)] if cut > len(steps) else [])
    for step_name, module in named:
        for name, tensor in module.state_dict().items():
            shape = tuple(tensor.shape)
            tensor = tensor.detach().cpu().contiguous().reshape(-1)
            digest.update(f"{step_name}.{name}:{tensor.dtype}:{shape}\n".encode())
            digest.update(tensor.view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
    return digest.hexdigest()


def prefix_digest(model: nn.Module, cut_name: str) -> str | None:
    """:meth:`NetworkChain.prefix_digest` of the cut ``cut_name`` of ``model`` without the
    probe run that builds a chain (checking a saved model's cut is cheap); None when
    ``model`` has no such cut or it is the first (an empty prefix)."""
    steps = _feature_steps(model)
    names = [name for name, _ in steps] + ["features", "pooled"]
    pool = getattr(model, "global_pool", None)
    if cut_name not in names[1:] or not isinstance(pool, nn.Module):
        return None
    return _steps_digest(steps, names.index(cut_name), pool)


def _classifier_path(model: nn.Module) -> str | None:
    from transferkit.train.groups import classifier_name

    return classifier_name(model)


def _classifier(model: nn.Module) -> nn.Module | None:
    get = getattr(model, "get_classifier", None)
    head = get() if get is not None else None
    return head if isinstance(head, nn.Module) else None


# -- views ------------------------------------------------------------------------------

@dataclass
class ViewPolicy:
    """View 0: ``eval_transform`` (the centre crop); views ``1..n_augmented``:
    ``train_transform`` under an RNG seeded by (``seed``, image digest, view index)."""

    eval_transform: object
    train_transform: object | None = None
    n_augmented: int = 0
    seed: int = 0

    @property
    def n_views(self) -> int:
        return 1 + self.n_augmented

    def identity(self, view: int) -> dict:
        """What determines view ``view`` of an image besides its bytes."""
        if view == 0:
            return {"view": "centre", "transform": repr(self.eval_transform)}
        return {"view": "augmented", "index": int(view), "transform": repr(self.train_transform),
                "seed": int(self.seed)}

    def render(self, image, digest: str, view: int) -> torch.Tensor:
        if view == 0:
            return self.eval_transform(image)
        text = f"{self.seed}:{digest}:{view}".encode()
        seed = int.from_bytes(hashlib.sha256(text).digest()[:8], "little")
        # timm's and torchvision's transforms draw from all three generators; the caller's
        # streams are left as they were (the training loop checkpoints them).
        python_state, numpy_state = random.getstate(), np.random.get_state()
        with torch.random.fork_rng(devices=[]):
            random.seed(seed)
            np.random.seed(seed % 2**32)
            torch.manual_seed(seed)
            try:
                return self.train_transform(image)
            finally:
                random.setstate(python_state)
                np.random.set_state(numpy_state)


class _ViewImages(Dataset):
    """Decodes each image once and renders the views it still needs."""

    def __init__(self, paths, digests, needed: list[list[int]], policy: ViewPolicy):
        self.paths, self.digests, self.needed, self.policy = paths, digests, needed, policy

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int):
        try:
            image = load_image(self.paths[index])
            views = torch.stack([self.policy.render(image, self.digests[index], v)
                                 for v in self.needed[index]])
            return index, views, ""
        except ImageDecodeError as exc:
            return index, None, str(exc)
        except Exception as exc:  # a transform failing on an odd image: skip it too
            return index, None, f"{self.paths[index]}: {exc}"


def _collate_views(items):
    return items  # already a batch: see _ViewImages and CachedViews.__getitems__


# -- the on-disk cache ----------------------------------------------------------------------

class ActivationCache:
    """Activations at one cut, one safetensors file per (image digest, view)."""

    def __init__(self, root: str | Path, identity: dict, shape: tuple[int, ...]):
        self.identity = identity
        self.shape = tuple(shape)
        self.folder = namespace_folder(Path(root).expanduser() / "activations", identity,
                                       "prefix.json", "activation cache")

    def _path(self, digest: str, view_key: str) -> Path:
        return self.folder / digest[:2] / f"{digest}-{view_key}.safetensors"

    def get(self, digest: str, view_key: str) -> np.ndarray | None:
        """The cached activation, or None when absent or unusable (it is recomputed)."""
        from safetensors.numpy import load

        path = self._path(digest, view_key)
        if not path.exists():
            return None
        try:
            with open_regular_file(path) as handle:
                array = load(handle.read())["activation"]
        # An entry is only a shortcut: whatever is wrong with it, recompute it.
        except Exception as exc:
            warnings.warn(f"activation cache entry {path} is unreadable ({exc}); recomputing it.")
            return None
        if array.shape != self.shape or array.dtype != np.float32:
            warnings.warn(f"activation cache entry {path} has shape {array.shape}, expected "
                          f"{self.shape}; recomputing it.")
            return None
        return array

    def put(self, digest: str, view_key: str, array: np.ndarray) -> None:
        from safetensors.numpy import save

        path = self._path(digest, view_key)
        try:
            path.parent.mkdir(exist_ok=True)
            write_bytes_atomic(path, save({"activation": np.ascontiguousarray(array, np.float32)}),
                               durable=False)
        except OSError as exc:
            raise CacheError(f"cannot write the activation cache entry {path} ({exc}).") from exc


# -- computing the activations ------------------------------------------------------------

@dataclass
class PrefixActivations:
    """Activations of the readable images: ``arrays[cut]`` is (n_ok, n_views, *shape)."""

    arrays: dict[int, np.ndarray]
    ok: np.ndarray  # (n_input,) bool
    skipped: list[tuple[str, str]] = field(default_factory=list)
    n_cached: int = 0  # (image, view) pairs read from the cache
    n_computed: int = 0  # (image, view) pairs run through the prefix


def prefix_activations(chain: NetworkChain, cuts: list[int], paths, policy: ViewPolicy,
                       backbone_identity: dict, cache_dir=None, use_cache: bool = True,
                       batch_size: int = 32, num_workers: int | None = None,
                       runtime: str = "auto", device: str = "cpu",
                       progress: bool = False, split_between_processes: bool = False
                       ) -> PrefixActivations:
    """The chain's activations at ``cuts`` for every view of every image in ``paths``.

    ``backbone_identity`` names the network the prefix comes from; cache entries are
    keyed by it and by a digest of the prefix's actual weights, so a network whose
    early layers changed never reads another's activations. Entries found in the cache
    (``cache_dir``, default as the feature cache) are read, the rest computed through
    the fast runtime in one pass that emits every cut, and stored. Unreadable images
    are left out (``ok``) and listed in ``skipped``.

    ``split_between_processes``: every process of a distributed run (``torchrun``,
    ``accelerate launch``) makes this same call, as fine-tuning does before it trains;
    each then computes and caches its share of the images, waits for the others, and
    reads the whole set from the cache. An entry a process cannot find there (a cache
    folder not shared between machines) it computes itself, so the result never depends
    on the file system. Without it (a call only one process makes, such as prediction
    after training) each process computes what it needs. Either way entries are written
    atomically, so two processes writing one entry leave one whole file.
    """
    from transferkit.train import distributed

    options = dict(backbone_identity=backbone_identity, cache_dir=cache_dir, use_cache=use_cache,
                   batch_size=batch_size, num_workers=num_workers, runtime=runtime, device=device)
    if not (split_between_processes and distributed.is_distributed() and use_cache):
        return _prefix_activations(chain, cuts, paths, policy, progress=progress, **options)
    paths = [str(p) for p in paths]
    rank, world = distributed.process_index(), distributed.world_size()
    share = _prefix_activations(chain, cuts, paths[rank::world], policy,
                                progress=progress and rank == 0, **options)
    distributed.barrier()
    result = _prefix_activations(chain, cuts, paths, policy, progress=False, **options)
    computed_by_all = sum(distributed.gather_objects(share.n_computed))
    result.n_cached = max(0, result.n_cached - computed_by_all)
    result.n_computed += computed_by_all
    return result


def _prefix_activations(chain: NetworkChain, cuts: list[int], paths, policy: ViewPolicy,
                        backbone_identity: dict, cache_dir=None, use_cache: bool = True,
                        batch_size: int = 32, num_workers: int | None = None,
                        runtime: str = "auto", device: str = "cpu",
                        progress: bool = False) -> PrefixActivations:
    """:func:`prefix_activations` in this process alone."""
    import os

    from tqdm.auto import tqdm

    from transferkit.features.runtime import make_runtime
    from transferkit.train.data import default_workers

    cuts = sorted(set(cuts))
    paths = [str(p) for p in paths]
    input_shape = chain.shapes[0]
    root = resolve_cache_dir(cache_dir) if use_cache else None
    caches = {}
    if root is not None:
        for cut in cuts:
            identity = {"backbone": backbone_identity, "cut": chain.cut_name(cut), "cut_index": cut,
                        "input_shape": list(input_shape), "weights": chain.prefix_digest(cut)}
            caches[cut] = ActivationCache(root, identity, chain.shapes[cut])
    n_views = policy.n_views
    view_keys = [namespace_key(policy.identity(v)) for v in range(n_views)]
    arrays = {cut: np.zeros((len(paths), n_views, *chain.shapes[cut]), dtype=np.float32)
              for cut in cuts}
    reasons: dict[int, str] = {}
    digests: list[str | None] = [None] * len(paths)
    needed: list[list[int]] = [[] for _ in paths]
    n_cached = 0
    for i, path in enumerate(paths):
        try:
            digests[i] = file_digest(path)
        except ImageDecodeError as exc:
            reasons[i] = str(exc)
            continue
        except OSError as exc:
            reasons[i] = f"{path}: cannot read file ({exc.strerror or exc})"
            continue
        for view in range(n_views):
            found = ([caches[cut].get(digests[i], view_keys[view]) for cut in cuts]
                     if caches else [None])
            if all(a is not None for a in found):
                for cut, array in zip(cuts, found):
                    arrays[cut][i, view] = array
                n_cached += 1
            else:
                needed[i].append(view)
    todo = [i for i in range(len(paths)) if needed[i] and i not in reasons]
    n_computed = 0
    if todo:
        onnx_path = None
        if root is not None:
            # The exported graph holds the weights: keyed by them, as the entries are.
            key = namespace_key({"backbone": backbone_identity, "cuts": cuts,
                                 "input_shape": list(input_shape),
                                 "weights": chain.prefix_digest(max(cuts))})
            onnx_path = root / "onnx" / f"prefix-{key}.onnx"
        module = chain.taps(cuts).eval()
        # Processes sharing a machine share its cores (None: ONNX Runtime takes them all).
        local_processes = int(os.environ.get("LOCAL_WORLD_SIZE", "1") or 1)
        threads = max(1, (os.cpu_count() or 1) // local_processes) if local_processes > 1 else None
        run = make_runtime(module, input_shape, runtime, onnx_path, device=device, threads=threads)
        dataset = _ViewImages([paths[i] for i in todo], [digests[i] for i in todo],
                              [needed[i] for i in todo], policy)
        workers = 0 if len(todo) <= 8 else default_workers(num_workers)
        per_batch = max(1, batch_size // n_views)
        loader = DataLoader(dataset, batch_size=per_batch, shuffle=False, num_workers=workers,
                            collate_fn=_collate_views, persistent_workers=False)
        with tqdm(total=len(todo), desc=f"frozen prefix ({run.name})", unit="img",
                  disable=not progress, leave=False) as bar:
            for items in loader:
                good = [(todo[j], views) for j, views, error in items if views is not None]
                for j, views, error in items:
                    if views is None:
                        reasons[todo[j]] = error
                if good:
                    outputs = run(torch.cat([views for _, views in good]))
                    row = 0
                    for i, views in good:
                        for view in needed[i]:
                            for cut, output in zip(cuts, outputs):
                                arrays[cut][i, view] = output[row]
                                if caches:
                                    caches[cut].put(digests[i], view_keys[view], output[row])
                            row += 1
                            n_computed += 1
                bar.update(len(items))
    ok = np.array([i not in reasons for i in range(len(paths))], dtype=bool)
    if not ok.all():
        arrays = {cut: array[ok] for cut, array in arrays.items()}
    skipped = [(paths[i], reasons[i]) for i in sorted(reasons)]
    return PrefixActivations(arrays, ok, skipped, n_cached, n_computed)


# -- training batches -----------------------------------------------------------------------

class CachedViews(Dataset):
    """Items ``(image index, view)`` → ``(activation, label)`` of cached activations."""

    def __init__(self, activations: np.ndarray, labels):
        self.activations = activations
        self.labels = torch.as_tensor(np.asarray(labels), dtype=torch.long)

    def __len__(self) -> int:
        return len(self.activations)

    def __getitems__(self, items):
        index = np.array([i for i, _ in items])
        view = np.array([v for _, v in items])
        batch = torch.from_numpy(np.ascontiguousarray(self.activations[index, view]))
        # The batch layout of transferkit.train.data, so the same step function serves.
        return (batch, self.labels[index], [], torch.arange(len(items)))

    def __getitem__(self, item):
        return self.__getitems__([item])


class OneViewPerImage(Sampler):
    """Each epoch: every image once, in random order, each as one of its views drawn at
    random (from ``generator`` when set, else torch's global RNG: seeded and checkpointed
    by the training loop, which sets ``generator`` when several processes share the
    order)."""

    def __init__(self, n_images: int, n_views: int, shuffle: bool):
        self.n_images, self.n_views, self.shuffle = n_images, n_views, shuffle
        self.generator = None

    def __len__(self) -> int:
        return self.n_images

    def __iter__(self):
        if not self.shuffle:
            yield from ((i, 0) for i in range(self.n_images))
            return
        order = torch.randperm(self.n_images, generator=self.generator).tolist()
        views = torch.randint(self.n_views, (self.n_images,), generator=self.generator).tolist()
        yield from ((i, views[i]) for i in order)


def cached_loader(activations: np.ndarray, labels, batch_size: int, shuffle: bool) -> DataLoader:
    """Batches of one view per image (the centre view, in order, when not ``shuffle``)."""
    dataset = CachedViews(activations, labels)
    n = len(dataset)
    # As image_loader: a training batch of one would break BatchNorm in train mode.
    drop_last = shuffle and n > batch_size and n % batch_size == 1
    return DataLoader(dataset, batch_size=batch_size, drop_last=drop_last, num_workers=0,
                      sampler=OneViewPerImage(n, activations.shape[1], shuffle),
                      collate_fn=_collate_views)


__all__ = ["NetworkChain", "prefix_digest", "Tail", "Taps", "ViewPolicy", "ActivationCache",
           "PrefixActivations", "prefix_activations", "cached_loader", "CachedViews", "OneViewPerImage"]
