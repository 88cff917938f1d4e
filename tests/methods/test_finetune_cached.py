"""FineTuner on cached frozen-prefix activations: learns, leaves the prefix untouched,
reuses the cache bit for bit, resumes an interrupted run exactly, refuses other views."""

from __future__ import annotations

import pytest
import torch

import transferkit.methods.finetune as finetune_module
from builders import write_class_folder
from transferkit.errors import TransferkitError
from transferkit.methods import FineTuner

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def files(root):
    paths = sorted(root.glob("*/*.png"))
    return [str(p) for p in paths], [p.parent.name for p in paths]


@pytest.fixture(scope="module")
def colour_data(tmp_path_factory):
    root = tmp_path_factory.mktemp("colours")
    return (files(write_class_folder(root / "train", per_class=12)),
            files(write_class_folder(root / "test", per_class=8, seed=7)),
            files(write_class_folder(root / "val", per_class=4, seed=3)))


def tuner(tiny_checkpoint, **kw):
    path, arch = tiny_checkpoint
    params = dict(weights=str(path), arch=arch, image_size=48, batch_size=8, epochs=6, lr=3e-3,
                  lr_factor=0.5, dropout=0.0, num_workers=0, progress=False, strategy="gradual",
                  k=2, views=2)
    params.update(kw)
    return FineTuner(**params)


def test_gradual_trains_on_cached_activations_and_leaves_the_prefix_untouched(
        tiny_checkpoint, colour_data, tmp_path):
    from safetensors.torch import load_file

    (x, y), (test_x, test_y), (val_x, val_y) = colour_data
    model = tuner(tiny_checkpoint, cache_dir=str(tmp_path / "cache")).fit(x, y, val_x, val_y)
    # Training images: the centre view and 2 augmented ones; validation: the centre view.
    assert model.prefix_["computed"] == 3 * len(x) + len(val_x) and model.prefix_["cached"] == 0
    assert model.prefix_["cuts"][-1] == "pooled" and len(model.prefix_["cuts"]) == 3
    assert model.score(test_x, test_y) >= 0.85
    stages = list(dict.fromkeys(row["stage"] for row in model.history_))
    assert stages[0] == "unfreeze-0" and len(stages) >= 2
    # Everything before the deepest cut is the pretrained network, bit for bit.
    pretrained, tuned = load_file(str(tiny_checkpoint[0])), model.model_.state_dict()
    deepest = model.prefix_["cuts"][0]  # e.g. "blocks.3"
    assert deepest.startswith("blocks.")
    order = ["conv_stem", "bn1"] + [f"blocks.{i}" for i in range(int(deepest.split(".")[1]))]
    prefix_keys = [k for k in pretrained if any(k.startswith(p + ".") for p in order)]
    assert len(prefix_keys) > 10
    for key in prefix_keys:
        assert torch.equal(tuned[key], pretrained[key]), key
    assert any(not torch.equal(tuned[k], pretrained[k]) for k in pretrained
               if k.startswith("conv_head."))

    again = tuner(tiny_checkpoint, cache_dir=str(tmp_path / "cache")).fit(x, y, val_x, val_y)
    assert again.prefix_["computed"] == 0 and again.prefix_["cached"] == 3 * len(x) + len(val_x)
    assert again.history_ == [{**row, "seconds": again.history_[i]["seconds"]}
                              for i, row in enumerate(model.history_)]


def test_views_zero_trains_the_whole_network_on_fresh_augmentations(tiny_checkpoint, colour_data):
    (x, y), _, _ = colour_data
    model = tuner(tiny_checkpoint, views=0, epochs=4, patience=None, val_fraction=0.0).fit(x, y)
    assert model.prefix_["computed"] == 0 and model.prefix_["cuts"] == []
    losses = [row["train_loss"] for row in model.history_]
    assert len(losses) == 4 and losses[-1] < losses[0]


class Interrupt:
    """Wraps the fine-tuning loop; raises KeyboardInterrupt once epoch ``stop_at`` of the
    whole run (counted across stages) is checkpointed, as Ctrl-C would."""

    def __init__(self, monkeypatch, stop_at):
        self.real, self.stop_at, self.seen = finetune_module.fit_loop, stop_at, 0
        monkeypatch.setattr(finetune_module, "fit_loop", self)

    def __call__(self, *args, **kwargs):
        def watch(row):
            self.seen += 1
            if self.stop_at is not None and self.seen >= self.stop_at:
                raise KeyboardInterrupt
        return self.real(*args, callbacks=[watch], **kwargs)


def test_an_interrupted_cached_run_resumes_to_the_uninterrupted_result(
        tiny_checkpoint, colour_data, tmp_path, monkeypatch):
    (x, y), _, _ = colour_data
    straight = tuner(tiny_checkpoint, run_dir=str(tmp_path / "straight"), patience=None).fit(x, y)
    assert len({row["stage"] for row in straight.history_}) >= 2
    loop = Interrupt(monkeypatch, stop_at=straight.epochs_run_ - 1)  # inside a cached stage
    with pytest.raises(KeyboardInterrupt):
        tuner(tiny_checkpoint, run_dir=str(tmp_path / "cut"), patience=None).fit(x, y)
    loop.stop_at, loop.seen = None, 0
    resumed = tuner(tiny_checkpoint, run_dir=str(tmp_path / "cut"), patience=None).fit(x, y)
    assert loop.seen == 1, "the rerun trained more than the one epoch left"
    assert [r["val_loss"] for r in resumed.history_] == pytest.approx(
        [r["val_loss"] for r in straight.history_], abs=1e-6)
    for key, value in straight.model_.state_dict().items():
        torch.testing.assert_close(resumed.model_.state_dict()[key], value, atol=1e-6, rtol=0)

    with pytest.raises(TransferkitError, match="different training run"):
        tuner(tiny_checkpoint, run_dir=str(tmp_path / "cut"), patience=None, views=3).fit(x, y)
