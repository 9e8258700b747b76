"""CUDA-graph training steps: refused where impossible; on a GPU, the same training as eager."""

from __future__ import annotations

import copy

import pytest
import torch
from typer.testing import CliRunner

import skiplab
from skiplab.cli import app
from skiplab.data import TensorData, load_dataset
from skiplab.models.registry import data_options
from skiplab.train import fit, get_recipe
from skiplab.train.graphs import GraphedStep, eager_step
from skiplab.train.trainer import task_loss

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


@pytest.fixture
def exact_cudnn():
    """Deterministic fp32 convolutions (no TF32, no atomics), so that eager and graphed
    training can be compared tightly: otherwise rounding differences grow step by step."""
    cudnn = torch.backends.cudnn
    saved = (cudnn.deterministic, cudnn.benchmark, cudnn.allow_tf32)
    cudnn.deterministic, cudnn.benchmark, cudnn.allow_tf32 = True, False, False
    yield
    cudnn.deterministic, cudnn.benchmark, cudnn.allow_tf32 = saved


def test_cuda_graphs_refused_on_cpu(tmp_path) -> None:
    data = load_dataset("digits")
    model = skiplab.create_model("mlp-4", **data_options("mlp-4", data.input_shape, 10))
    with pytest.raises(ValueError, match="cuda_graphs=True needs a CUDA device"):
        fit(model, data, get_recipe("quick", epochs=1), tmp_path / "run", device="cpu",
            cuda_graphs=True)  # fmt: skip
    assert not (tmp_path / "run").exists()  # nothing written
    with pytest.raises(ValueError, match="on a CUDA device"):
        GraphedStep(model, task_loss, None)


def test_cli_cuda_graphs_on_cpu_is_exit_2(tmp_path) -> None:
    res = CliRunner().invoke(
        app, ["train", "mlp-4", "--device", "cpu", "--cuda-graphs", "--out", str(tmp_path / "r")]
    )
    assert res.exit_code == 2, res.output
    assert "cuda_graphs=True needs a CUDA device" in res.output
    assert "Traceback" not in res.output


def test_eager_step_replaces_gradients() -> None:
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 2)
    x, y = torch.randn(4, 3), torch.tensor([0, 1, 1, 0])
    eager_step(model, task_loss, x, y, None)
    first = model.weight.grad.clone()
    eager_step(model, task_loss, x, y, None)  # same batch: same gradient, not twice it
    assert torch.equal(model.weight.grad, first)


@cuda
def test_graphed_step_matches_eager(exact_cudnn) -> None:
    """Eight SGD steps (with a smaller batch in the middle) replayed from a graph give the
    weights, BN statistics and losses of the eager steps."""
    torch.manual_seed(0)
    net = skiplab.create_model("resnet-20", num_classes=10).cuda()
    nets = [net, copy.deepcopy(net)]
    opts = [torch.optim.SGD(n.parameters(), lr=0.05, momentum=0.9) for n in nets]
    graphed = GraphedStep(nets[1], task_loss, None, warmup=2)
    gen = torch.Generator(device="cuda").manual_seed(1)
    for i in range(8):
        bs = 8 if i == 5 else 16
        x = torch.randn(bs, 3, 32, 32, device="cuda", generator=gen)
        y = torch.randint(0, 10, (bs,), device="cuda", generator=gen)
        _, loss0 = eager_step(nets[0], task_loss, x, y, None)
        _, loss1 = graphed(x, y)
        for o in opts:
            o.step()
        torch.testing.assert_close(loss1, loss0, rtol=1e-4, atol=1e-4)
    assert graphed.graph is not None and graphed.replays >= 4
    for (k, a), b in zip(nets[0].state_dict().items(), nets[1].state_dict().values(), strict=True):
        torch.testing.assert_close(b.float(), a.float(), rtol=1e-3, atol=1e-4, msg=k)


@cuda
def test_graphed_dropout_draws_new_masks() -> None:
    """Replays advance the CUDA generator: dropout masks differ from step to step."""
    torch.manual_seed(0)
    net = torch.nn.Sequential(
        torch.nn.Linear(32, 32), torch.nn.Dropout(0.5), torch.nn.Linear(32, 2)
    )
    graphed = GraphedStep(net.cuda(), task_loss, None, warmup=1)
    x, y = torch.randn(64, 32, device="cuda"), torch.zeros(64, dtype=torch.long, device="cuda")
    outs = [graphed(x, y)[0].clone() for _ in range(4)]
    assert graphed.replays >= 2
    assert not torch.equal(outs[-1], outs[-2])


@cuda
def test_fit_with_cuda_graphs_matches_eager(tmp_path, exact_cudnn) -> None:
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(300, 3, 16, 16, generator=g), torch.randint(0, 4, (300,), generator=g)
    data = TensorData("toy", "classification", x, y, x[:64], y[:64], 4, "crop-flip", {})
    recipe = get_recipe("quick", epochs=2, batch_size=64, precision="fp32")
    runs = []
    for graphs in (False, True):
        torch.manual_seed(0)
        model = skiplab.create_model("resnet-20", num_classes=4)
        runs.append(fit(model, data, recipe, tmp_path / str(graphs), device="cuda",
                        cuda_graphs=graphs))  # fmt: skip
    assert torch.backends.cudnn.benchmark is False  # fit restores the process-wide flag
    for a, b in zip(runs[0].metrics, runs[1].metrics, strict=True):
        assert b["train_loss"] == pytest.approx(a["train_loss"], rel=1e-3)
        assert b["test_loss"] == pytest.approx(a["test_loss"], rel=1e-2)


@cuda
def test_uncapturable_model_falls_back_to_eager(caplog) -> None:
    """A forward that syncs with the CPU (.item()) cannot be captured: one warning, then
    the same steps eagerly."""

    class Syncs(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = torch.nn.Linear(8, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            scale = float(x.abs().max().item()) or 1.0  # a device-to-host sync
            return self.fc(x / scale)

    torch.manual_seed(0)
    net = Syncs().cuda()
    step = GraphedStep(net, task_loss, None, warmup=1)
    x, y = torch.randn(16, 8, device="cuda"), torch.zeros(16, dtype=torch.long, device="cuda")
    with caplog.at_level("WARNING"):
        losses = [step(x, y)[1].item() for _ in range(4)]
    assert step.failed and step.graph is None and step.replays == 0
    assert "CUDA graph capture failed" in caplog.text
    assert all(abs(v - losses[0]) < 1e-6 for v in losses)  # no optimizer: same loss each step
    assert net.fc.weight.grad is not None
