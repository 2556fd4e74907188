"""Extra training data (data.extra): layouts, validation, identity, mixed batches, resume.

The "generated" images are stand-ins made from the CIFAR-10 subset (mirrored and shifted
copies with their labels), written uncompressed to a temporary folder.
"""

from __future__ import annotations

import json
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from atzoo.config import build_config
from atzoo.data.bundle import ImageArrays
from atzoo.data.extra import FINGERPRINT_ROWS, fingerprint_rows, open_extra
from atzoo.data.mixing import MixedTrainLoader
from atzoo.errors import DataError

SHAPE = (32, 32, 3)


@pytest.fixture(scope="module")
def cifar(shared_data: Path) -> dict[str, np.ndarray]:
    with np.load(shared_data / "cifar10_subset.npz") as d:
        return {k: d[k][:600] for k in ("x_train", "y_train")} | {k: d[k][:32] for k in ("x_test", "y_test")}


@pytest.fixture(scope="module")
def stand_in(cifar: dict[str, np.ndarray], tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    """1200 'generated' images (flips and 2-pixel shifts of the subset) in three layouts."""
    root = tmp_path_factory.mktemp("extra")
    x, y = cifar["x_train"], cifar["y_train"].astype(np.int64)
    images = np.ascontiguousarray(np.concatenate([x[:, :, ::-1], np.roll(x, 2, axis=1)]))
    labels = np.concatenate([y, y])
    np.savez(root / "gen.npz", image=images, label=labels)
    (root / "one").mkdir()
    np.save(root / "one" / "image.npy", images)
    np.save(root / "one" / "label.npy", labels)
    (root / "shards").mkdir()
    for k, (a, b) in enumerate([(0, 500), (500, 1200)]):
        np.save(root / "shards" / f"image_{k}.npy", images[a:b])
        np.save(root / "shards" / f"label_{k}.npy", labels[a:b].astype(np.int32))
    np.savez(root / "small.npz", x_train=x[:64], y_train=y[:64], x_test=cifar["x_test"], y_test=cifar["y_test"])
    return {"root": root, "images": images, "labels": labels}


def _open(spec: str):
    return open_extra(spec, image_shape=SHAPE, num_classes=10)


def test_every_layout_reads_the_same_rows_and_has_one_digest(stand_in) -> None:
    root, images, labels = stand_in["root"], stand_in["images"], stand_in["labels"]
    rows = np.array([0, 499, 500, 1199, 7, 7])
    digests = set()
    for spec in (f"npz:{root}/gen.npz", f"npy:{root}/one", f"npy:{root}/shards", f"npz:{root}/shards"):
        extra = _open(spec)
        x, y = extra.gather(rows)
        assert len(extra) == 1200 and x.dtype == np.uint8 and y.dtype == np.int64
        assert np.array_equal(x, images[rows]) and np.array_equal(y, labels[rows]), spec
        digests.add(extra.digest())
    assert len(digests) == 1  # content, not storage, is hashed (the shards even store int32 labels)


def test_digest_covers_a_fixed_sample_and_the_shape(stand_in, tmp_path: Path) -> None:
    images, labels = stand_in["images"].copy(), stand_in["labels"].copy()
    sample = fingerprint_rows(len(images))
    assert len(sample) == min(FINGERPRINT_ROWS, len(images)) and sample[0] == 0 and sample[-1] == len(images) - 1
    base = _open(f"npz:{stand_in['root']}/gen.npz").digest()
    outside = int(np.setdiff1d(np.arange(len(images)), sample)[0])
    images[outside] ^= 1  # a row outside the sample: documented as unseen
    np.savez(tmp_path / "a.npz", image=images, label=labels)
    assert _open(f"npz:{tmp_path}/a.npz").digest() == base
    labels[sample[5]] = (labels[sample[5]] + 1) % 10  # a sampled label
    np.savez(tmp_path / "b.npz", image=images, label=labels)
    assert _open(f"npz:{tmp_path}/b.npz").digest() != base
    np.savez(tmp_path / "c.npz", image=images[:-1], label=labels[:-1])
    assert _open(f"npz:{tmp_path}/c.npz").digest() != base


def test_bad_extra_data_is_a_one_line_error(stand_in, tmp_path: Path) -> None:
    images, labels = stand_in["images"][:20], stand_in["labels"][:20]
    np.savez_compressed(tmp_path / "zipped.npz", image=images, label=labels)
    cases = {
        "compressed": (f"npz:{tmp_path}/zipped.npz", "np.savez_compressed"),
        "kind": (f"pickle:{tmp_path}/zipped.npz", "data.extra must be"),
        "missing": (f"npz:{tmp_path}/nothing.npz", "is not an .npz file or a folder"),
    }
    np.savez(tmp_path / "keys.npz", x=images, y=labels)
    cases["keys"] = (f"npz:{tmp_path}/keys.npz", "lacks image, label")
    np.savez(tmp_path / "size.npz", image=images[:, :16], label=labels)
    cases["size"] = (f"npz:{tmp_path}/size.npz", "like the training set")
    np.savez(tmp_path / "label.npz", image=images, label=labels + 10)
    cases["label"] = (f"npz:{tmp_path}/label.npz", "outside 0 .. 9")
    (tmp_path / "cut").mkdir()
    np.save(tmp_path / "cut" / "image.npy", images)
    np.save(tmp_path / "cut" / "label.npy", labels)
    blob = tmp_path / "cut" / "image.npy"
    blob.write_bytes(blob.read_bytes()[:-10])  # truncated: refused from the header, before any read
    cases["truncated"] = (f"npy:{tmp_path}/cut", "the file is damaged")
    for name, (spec, words) in cases.items():
        with pytest.raises(DataError) as err:
            _open(spec)
        message = str(err.value)
        assert words in message and "\n" not in message, (name, message)
    assert zipfile.ZipFile(tmp_path / "zipped.npz").infolist()[0].compress_type != zipfile.ZIP_STORED


def _loader(data: ImageArrays, extra, *, rank: int = 0, world: int = 1, seed: int = 3) -> MixedTrainLoader:
    return MixedTrainLoader(data, extra, 20, fraction=0.7, crop_padding=4, flip=True, device="cpu", seed=seed,
                            rank=rank, world_size=world)


def test_mixed_batches_share_resume_and_shards(stand_in, cifar) -> None:
    data = ImageArrays.from_nhwc(cifar["x_train"][:200], cifar["y_train"][:200])
    extra = _open(f"npz:{stand_in['root']}/gen.npz")
    loader = _loader(data, extra)
    assert loader.extra_count == 14 and len(loader) == 200 // 20  # epoch = the original set's batches
    loader.set_epoch(1)
    batches = list(loader)
    assert loader.take_shares() == [0.7] * len(loader)
    # Resume mid-epoch: the same batches from there on, bit for bit.
    for (x, y), (x2, y2) in zip(batches[4:], loader.iter_from(4)):
        assert torch.equal(x, x2) and torch.equal(y, y2)
    # Original positions of an epoch are distinct; extra rows carry their own labels.
    plan = loader.plan()
    original = plan.indices.view(len(loader), 20)[:, :6].reshape(-1)
    assert len(set(original.tolist())) == len(original) and int(original.max()) < 200
    rows = plan.indices.view(len(loader), 20)[:, 6:].reshape(-1) - 200
    assert torch.equal(batches[0][1][6:], torch.from_numpy(stand_in["labels"][rows[:14].numpy()]))
    loader.set_epoch(2)
    assert not torch.equal(loader.plan().indices, plan.indices)  # a new order each epoch
    # Two processes: disjoint original shards, the same share, their union one global batch.
    ranks = [_loader(data, extra, rank=r, world=2) for r in (0, 1)]
    for r in ranks:
        r.set_epoch(1)
    assert len(ranks[0]) == 200 // 40
    plans = [r.plan().indices.view(len(r), 20) for r in ranks]
    first = [set(p[:, :6].reshape(-1).tolist()) for p in plans]
    assert not first[0] & first[1]


def test_train_mixes_resumes_bit_exactly_and_records_the_extra_set(stand_in, tmp_path: Path) -> None:
    from atzoo.engine import read_metrics, train
    from atzoo.engine.checkpoint import load_checkpoint

    root = stand_in["root"]
    overrides = [
        f"data.extra=npz:{root}/gen.npz", "data.extra_fraction=0.75", "data.batch_size=16", "optim.epochs=2",
        "attack.steps=1", "run.trackers=[]", "run.log_every=1", "run.checkpoint_every_steps=3",
        "run.keep_checkpoints=10", "run.deterministic=true", "eval.attacks=clean", "eval.n_ex=16",
        "eval.batch_size=16", "eval.invariance=false",
        # The rest of the recipe, resumed too: scheduled EMA with copied BN statistics, label smoothing.
        "averaging.ema=true", "averaging.ema_decay=0.995", "averaging.ema_warmup=0.25", "averaging.ema_dynamic=true",
        "averaging.ema_buffers=copy", "optim.label_smoothing=0.1",
    ]

    def config():
        return build_config(None, overrides, method={"name": "trades"}, model={"name": "small_cnn"},
                            data={"name": f"npz:{root}/small.npz"})

    full = train(config(), out=tmp_path / "full")  # 64 originals / 16 = 4 steps per epoch, 8 in all
    shares = [r["extra_share"] for r in read_metrics(full) if r["kind"] == "step"]
    assert len(shares) == 8 and all(s == {"min": 0.75, "max": 0.75, "mean": 0.75} for s in shares)
    # A run killed after the mid-epoch checkpoint of step 6 (epoch 1, batch 2), resumed.
    crashed = tmp_path / "crashed"
    shutil.copytree(full, crashed)
    shutil.rmtree(crashed / "checkpoints" / "step-000000008")
    for name in ("model.safetensors", "model_meta.json", "eval.json"):
        (crashed / name).unlink()
    assert load_checkpoint(crashed / "checkpoints" / "step-000000006").state["position"]["batch"] == 2
    train(config(), out=crashed, resume=True)
    a, b = load_file(full / "model.safetensors"), load_file(crashed / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    report = json.loads((crashed / "eval.json").read_text())
    extra = report["provenance"]["extra_data"]
    assert extra["n"] == 1200 and extra["fraction"] == 0.75 and extra["source"] == "npz:gen.npz"
    assert report["dataset_identity"]["extra"]["digest"] == _open(f"npz:{root}/gen.npz").digest()
    plain = build_config(None, [], data={"name": f"npz:{root}/small.npz"})
    from atzoo.data import create_dataset
    from atzoo.data.fingerprint import dataset_identity

    assert report["dataset_identity"]["fingerprint"] != dataset_identity(create_dataset(plain.data.name))["fingerprint"]
