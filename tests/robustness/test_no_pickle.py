"""Nothing the project reads back can run code (issue 19, point 5): a pickle payload is planted in every kind of file
latentcheck reads back, and the test proves it never runs (its marker file is never created) and that the refusal is
a clear error. Before: `caption-imagine train --resume` unpickled `checkpoints/step-*/rng.pt` with
`torch.load(weights_only=False)`, and a planted file ran its payload."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from latentcheck.core.errors import LatentcheckError, ModelLoadError


class Payload:
    """Unpickling this runs `touch <marker>`."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.fixture()
def marker(tmp_path) -> Path:
    m = tmp_path / "PAYLOAD-RAN"
    yield m
    assert not m.exists(), "a planted pickle payload ran"


def test_the_payload_is_real(tmp_path):
    """The control: loading the planted file the unsafe way does run it (so the other tests can fail)."""
    m = tmp_path / "ran"
    torch.save({"x": Payload(m)}, tmp_path / "p.pt")
    torch.load(tmp_path / "p.pt", weights_only=False)
    assert m.exists()


def _tiny_training_state():
    p = torch.nn.Parameter(torch.randn(3, 2))
    opt = torch.optim.AdamW([p], lr=1e-2)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0 / (s + 1))
    p.grad = torch.ones_like(p)
    opt.step()
    sched.step()
    return p, opt, sched


def test_training_state_roundtrips_without_pickle(tmp_path):
    from latentcheck.core.training import _rng_state, _set_rng_state, load_state, save_state

    p, opt, sched = _tiny_training_state()
    rng = np.random.default_rng(3)
    rng.random(5)
    save_state(opt.state_dict(), tmp_path / "optimizer")
    save_state(sched.state_dict(), tmp_path / "scheduler")
    save_state(_rng_state(rng), tmp_path / "rng")
    assert sorted(f.name for f in tmp_path.iterdir()) == [
        "optimizer.json", "optimizer.safetensors", "rng.json", "rng.safetensors", "scheduler.json",
        "scheduler.safetensors"]
    want_next = (rng.random(3), torch.rand(2), __import__("random").random())
    p2, opt2, sched2 = _tiny_training_state()
    opt2.load_state_dict(load_state(tmp_path / "optimizer"))
    sched2.load_state_dict(load_state(tmp_path / "scheduler"))
    rng2 = np.random.default_rng(99)
    _set_rng_state(rng2, load_state(tmp_path / "rng"))
    assert np.array_equal(rng2.random(3), want_next[0])
    assert torch.equal(torch.rand(2), want_next[1]) and __import__("random").random() == want_next[2]
    s1, s2 = opt.state_dict(), opt2.state_dict()
    assert s1["param_groups"] == s2["param_groups"]
    assert all(torch.equal(s1["state"][0][k], s2["state"][0][k]) for k in s1["state"][0])
    assert sched.state_dict() == sched2.state_dict()


@pytest.mark.parametrize("name", ["rng", "optimizer", "scheduler"])
def test_a_planted_format_1_checkpoint_file_is_refused_and_never_runs(name, tmp_path, marker):
    from latentcheck.core.training import load_state

    torch.save({"numpy": Payload(marker)}, tmp_path / f"{name}.pt")
    with pytest.raises(LatentcheckError, match=f"cannot read checkpoint file .*{name}.pt: UnpicklingError"):
        load_state(tmp_path / name)


def test_a_planted_tensor_block_is_refused_and_never_runs(tmp_path, marker):
    from latentcheck.core.runner import TensorStore

    store = TensorStore(tmp_path / "tensors")
    store.save(["a"], {"latents": [np.zeros((2, 3))]})
    np.savez(tmp_path / "tensors" / "0000planted.npz", __keys__=np.array(["b"]),
             latents__0=np.array([Payload(marker)], dtype=object))
    with pytest.raises(LatentcheckError, match="0000planted.npz is not a latentcheck tensor block .*pickled data is "
                                               "never loaded"):
        store.load()


def test_a_planted_npy_for_an_intervention_is_refused_and_never_runs(tmp_path, marker):
    from latentcheck.core.interventions import REGISTRY, parse_specs

    path = tmp_path / "tau.npy"
    np.save(path, np.array([Payload(marker)], dtype=object), allow_pickle=True)
    spec = parse_specs([f"replay:path={path}"])[0]
    with pytest.raises(LatentcheckError, match="replay: cannot read .*tau.npy as a numeric .npy array"):
        REGISTRY.get("replay").fn(np.zeros((2, 4)), None, None, spec)


def test_a_planted_pytorch_model_bin_is_refused_and_never_runs(tiny_checkpoint, tmp_path, marker):
    from latentcheck.core.loader import load_model

    src = Path(tiny_checkpoint("toy", "toy-latent"))
    ck = tmp_path / "ck"
    shutil.copytree(src, ck)
    (ck / "model.safetensors").unlink()
    torch.save({"model.embed_tokens.weight": Payload(marker)}, ck / "pytorch_model.bin")
    with pytest.raises(ModelLoadError, match="cannot load model weights"):
        load_model(str(ck), profile="toy-latent")
