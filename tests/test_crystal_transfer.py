"""Fine-tuning CHGNet (``crystal-chgnet`` with ``transfer: top-k``): the chosen stages train and nothing else of
CHGNet moves, the fine-tuned forward starts from what the frozen features are, and a trained model reloads."""
import textwrap

import numpy as np
import pytest
import torch
from pymatgen.core import Lattice, Structure
from safetensors import safe_open

import zoo
from encoders import ZooError
from encoders.crystal import CrystalCHGNet, chgnet_backbone
from zoo.model import ZooModel


@pytest.fixture(autouse=True)
def one_thread():
    """These cells are a few dozen atoms: a second torch thread only spins on them (and on a loaded machine turns a
    0.06 s step into 4 s)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def fcc(a: float) -> Lattice:
    """The primitive cell of a face-centred cubic lattice of cube edge ``a``."""
    return Lattice(np.array([[0, 1, 1], [1, 0, 1], [1, 1, 0]]) * a / 2)


def cells() -> list[Structure]:
    """Rocksalt NaCl, CsCl and diamond Si (2 atoms each), each at three lattice constants."""
    made = []
    for scale in (0.98, 1.0, 1.03):
        made.append(Structure(fcc(5.64 * scale), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]]))
        made.append(Structure(Lattice.cubic(4.12 * scale), ["Cs", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]]))
        made.append(Structure(fcc(5.43 * scale), ["Si", "Si"], [[0, 0, 0], [0.25, 0.25, 0.25]]))
    return made


def trained_chgnet(top_k: int) -> tuple[dict, dict]:
    """CHGNet's tensors before and after three AdamW steps of a ``top-k`` encoder on the cells."""
    encoder = CrystalCHGNet(dim=16)
    encoder.set_transfer("top-k", top_k=top_k)
    before = {k: v.clone() for k, v in encoder.chgnet.state_dict().items()}
    batch = encoder.collate(encoder.featurize_many(cells()))
    optimizer = torch.optim.AdamW([p for p in encoder.parameters() if p.requires_grad], lr=1e-2)
    for _ in range(3):
        optimizer.zero_grad()
        encoder(batch).x.square().mean().backward()
        optimizer.step()
    return before, encoder.chgnet.state_dict()


def changed(before: dict, after: dict) -> set[str]:
    return {k for k in before if not torch.equal(before[k], after[k])}


def test_top_1_trains_the_last_block_and_leaves_every_earlier_chgnet_tensor_bit_identical():
    moved = changed(*trained_chgnet(top_k=1))
    assert any(k.startswith("atom_conv_layers.3.") for k in moved)
    assert any(k.startswith("mlp.") for k in moved)  # the readout after it trains too
    assert all(k.startswith(("atom_conv_layers.3.", "readout_norm.", "mlp.")) for k in moved), moved


def test_top_5_fine_tunes_all_of_chgnet_down_to_its_embeddings():
    moved = changed(*trained_chgnet(top_k=5))
    for stage in ("atom_embedding.", "bond_basis_expansion.", "angle_embedding.", "atom_conv_layers.0.",
                  "bond_conv_layers.0.", "angle_layers.0.", "atom_conv_layers.3."):
        assert any(k.startswith(stage) for k in moved), stage
    # what CHGNet itself never trains (its element reference energies), or what the features never read
    assert not any(k.startswith(("composition_model.", "site_wise.", "angle_layers.2.")) for k in moved)


def test_the_fine_tuned_forward_starts_where_the_frozen_features_are():
    frozen = CrystalCHGNet(dim=16)
    tuned = CrystalCHGNet(dim=16)
    tuned.load_state_dict(frozen.state_dict())
    tuned.set_transfer("top-k", top_k=2)
    items = cells()
    with torch.no_grad():
        a = frozen(frozen.collate(frozen.featurize_many(items) + [None]))
        b = tuned(tuned.collate(tuned.featurize_many(items) + [None]))
    assert torch.equal(a.mask, b.mask) and (a.x - b.x).abs().max() < 1e-5


TASK = """
    tasks:
      cell-size:
        description: Lattice constant of generated cubic cells, to fine-tune CHGNet on
        inputs:
          structure: {column: structure, encoder: crystal-chgnet, transfer: top-k, top_k: 1, lr: 1.0e-3}
        fusion: {type: mean, dim: 16}
        head: {type: regression, targets: {a: a}}
        data: {dataset: generated, fractions: [0.6, 0.2, 0.2]}
        train: {epochs: 2, batch_size: 4, warmup_epochs: 0}
        metric: mae
"""


def test_a_top_k_model_saves_its_trained_blocks_and_reloads_to_the_same_predictions(tmp_path):
    registry = tmp_path / "mine.yaml"
    registry.write_text(textwrap.dedent(TASK))
    rows = [{"structure": c.as_dict(), "a": c.lattice.a} for c in cells()]
    model, _ = zoo.train("cell-size", rows, out=tmp_path / "m", registry=registry, progress=False,
                         overrides={"encoders.crystal-chgnet.dim": 16}, device="cpu")
    with safe_open(str(tmp_path / "m" / "model.safetensors"), "pt") as f:
        saved = {k.removeprefix("encoders.crystal-chgnet.chgnet.") for k in f.keys() if ".chgnet." in k}
    assert saved and all(k.startswith(("atom_conv_layers.3.", "readout_norm.", "mlp.")) for k in saved), saved
    loaded = zoo.load(tmp_path / "m", device="cpu")
    trained = loaded.encoders["crystal-chgnet"].chgnet.atom_conv_layers[3].state_dict()
    wheel = chgnet_backbone("0.3.0").atom_conv_layers[3].state_dict()
    assert any(not torch.equal(trained[k], wheel[k]) for k in wheel)  # the reload holds the trained block
    want, got = model.predict(rows), loaded.predict(rows)
    assert np.allclose([r["a"] for r in got], [r["a"] for r in want], atol=1e-5)


@pytest.mark.parametrize("inputs, message", [
    ({"transfer": "lora"}, "crystal-chgnet has no transfer strategy 'lora' (it has train and frozen"),
    ({"transfer": "top-k", "top_k": 6}, "crystal-chgnet: top_k 6 is not 1 to 5, the stages of CHGNet"),
])
def test_a_strategy_crystal_chgnet_does_not_have_is_one_clear_line(inputs, message):
    spec = zoo.info("materials-property", overrides={f"inputs.structure.{k}": v for k, v in inputs.items()})
    with pytest.raises(ZooError) as err:
        ZooModel(spec)
    assert str(err.value).startswith(message) and "\n" not in str(err.value)
