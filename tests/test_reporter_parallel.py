"""``n_jobs`` of JacobianBoundReporter.certify / report and the sharding of art_jacreg.certify.parallel.

Parallel runs must give the very bits of ``n_jobs=1`` (the batches are the same, only where they run changes), refuse
bad ``n_jobs`` with a clear error, and leave the caller's model exactly as found; under an initialised
torch.distributed group the batches are sharded over the ranks and every rank gets all the results.
"""

from __future__ import annotations

import os
import tempfile

import numpy as np
import pytest
import torch
import torch.distributed as dist
from torch import nn

from art_jacreg import JacobianBoundReporter
from art_jacreg.certify import build_network
from art_jacreg.certify.parallel import map_batches, radius_batch
from art_jacreg.data import load_mnist
from art_jacreg.models import mnist_maxpool_cnn


def _reporter(model: nn.Module) -> JacobianBoundReporter:
    return JacobianBoundReporter(
        model,
        nn.CrossEntropyLoss(),
        (1, 28, 28),
        10,
        clip_values=(0.0, 1.0),
        preprocessing=(0.1307, 0.3081),
        device_type="cpu",
        verbose=False,
    )


@pytest.fixture(scope="module")
def digits() -> tuple[np.ndarray, np.ndarray]:
    _, (x, y), _, _ = load_mnist(seed=0)
    return np.asarray(x[:6], np.float32), np.asarray(y[:6]).argmax(1)


def test_certify_with_two_processes_is_bit_identical_and_leaves_the_model(digits):
    x, _ = digits
    model = mnist_maxpool_cnn(seed=1)
    model.train()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    rep = _reporter(model)
    pred1, r1 = rep.certify(x, norm=2, method="interval", batch_size=2)
    pred2, r2 = rep.certify(x, norm=2, method="interval", batch_size=2, n_jobs=2)
    np.testing.assert_array_equal(pred1, pred2)
    assert r1.tobytes() == r2.tobytes() and (r1 > 0).any()
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())
    assert all(m.training for m in model.modules())
    assert all(p.grad is None for p in model.parameters())


def test_report_with_two_processes_has_identical_certificates(digits):
    x, y = digits
    rep = _reporter(mnist_maxpool_cnn(seed=2))
    kwargs = dict(norm=np.inf, attack="pgd", method="interval", batch_size=3, attack_params={"max_iter": 3})
    one = rep.report(x, y, 0.01, **kwargs)
    two = rep.report(x, y, 0.01, n_jobs=2, **kwargs)
    for column in ("certified_loss_bound", "certified", "certified_radius", "first_order_loss", "attack_loss"):
        assert np.asarray(getattr(one, column)).tobytes() == np.asarray(getattr(two, column)).tobytes(), column


@pytest.mark.parametrize("bad", [0, -1, 1.5, "2", True, None])
def test_invalid_n_jobs_names_the_argument(digits, bad):
    rep = _reporter(mnist_maxpool_cnn(seed=0))
    with pytest.raises(ValueError, match="n_jobs"):
        rep.certify(digits[0][:2], n_jobs=bad)
    with pytest.raises(ValueError, match="n_jobs"):
        rep.report(digits[0][:2], digits[1][:2], 0.1, n_jobs=bad)


def _rank_main(rank: int, world: int, init_file: str, out_dir: str, x: np.ndarray, pred: np.ndarray) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        net = build_network(mnist_maxpool_cnn(seed=1).eval(), (1, 28, 28), (0.1307, 0.3081))
        jobs = [(x[i : i + 2], pred[i : i + 2], 2.0, (0.0, 1.0), "interval") for i in range(0, len(x), 2)]
        radii = map_batches(radius_batch, net, jobs)
        np.save(os.path.join(out_dir, f"rank{rank}.npy"), np.concatenate(radii))
    finally:
        dist.destroy_process_group()


def test_distributed_ranks_shard_and_all_gather(digits):
    x, _ = digits
    net = build_network(mnist_maxpool_cnn(seed=1).eval(), (1, 28, 28), (0.1307, 0.3081))
    pred = net(torch.as_tensor(x)).argmax(1).numpy()
    jobs = [(x[i : i + 2], pred[i : i + 2], 2.0, (0.0, 1.0), "interval") for i in range(0, len(x), 2)]
    reference = np.concatenate(map_batches(radius_batch, net, jobs))
    with tempfile.TemporaryDirectory() as tmp:
        init_file = os.path.join(tmp, "init")
        torch.multiprocessing.spawn(_rank_main, args=(2, init_file, tmp, x, pred), nprocs=2, join=True)
        for rank in range(2):
            assert np.load(os.path.join(tmp, f"rank{rank}.npy")).tobytes() == reference.tobytes()


def test_cli_certify_n_jobs_prints_the_same_summary(tmp_path, capsys):
    from art_jacreg.cli import build_parser, main
    from art_jacreg.models import mnist_cnn

    path = tmp_path / "model.pt"
    torch.save(mnist_cnn(seed=0).state_dict(), path)
    outputs = []
    for jobs in ("1", "2"):
        args = ["certify", str(path), "--n", "8", "--batch-size", "4", "--method", "interval", "--quiet"]
        assert main([*args, "--n-jobs", jobs]) == 0
        outputs.append(capsys.readouterr().out)
    assert outputs[0] == outputs[1] and "median certified radius" in outputs[0]
    for command in ("certify", "report"):
        assert build_parser().parse_args([command, str(path), "--n-jobs", "3"]).n_jobs == 3
        assert build_parser().parse_args([command, str(path)]).n_jobs == 1
        with pytest.raises(SystemExit):
            build_parser().parse_args([command, str(path), "--n-jobs", "0"])
    assert "--n-jobs" in capsys.readouterr().err
