"""`secure-assist compare` grid: cartesian product, axes that do not apply, fingerprints, bad input."""

from __future__ import annotations

from pathlib import Path

import pytest

from protocol.errors import UserInputError
from secure_assist.cli import main
from secure_assist.compare.grid import SweepAxes, expand, fingerprint, point_identity
from secure_assist.config import FinetuneConfig
from secure_assist.mechanisms import MECHANISMS

BASE = FinetuneConfig(model="tiny-llama", eval_samples=16, epochs=2)


def test_product_of_axes_with_epsilon_only_where_a_mechanism_reads_it(tmp_path: Path) -> None:
    axes = SweepAxes(mechanisms=("none", "gaussian", "label_rr", "rotation_mask"), epsilons=(0.5, 1.0, 2.0),
                     layer_subsets=(None, (1,)), train_samples=(20, 40))
    points = expand(BASE, axes, tmp_path)
    # ε multiplies only gaussian and label_rr: (1 + 3 + 3 + 1) mechanisms·ε × 2 layer subsets × 2 counts.
    assert len(points) == 8 * 2 * 2
    assert len({p.fingerprint for p in points}) == len(points)
    for point in points:
        reads_epsilon = any(MECHANISMS[m].uses_epsilon() for m in point.config.mechanism)
        assert (point.config.epsilon is not None) == reads_epsilon
        assert point.config.reuse_forwards and point.config.mechanism_seed == BASE.seed
        assert Path(point.config.workdir).parent == tmp_path / "runs"
    labels = [p.label for p in points]
    assert "gaussian layers=1 n=20 ε=0.5" in labels and "none layers=all n=40" in labels


def test_activation_noise_axis_composes_and_zero_means_none(tmp_path: Path) -> None:
    axes = SweepAxes(mechanisms=("none", "gaussian+rotation_mask"), epsilons=(1.0,),
                     activation_noise_multipliers=(0.0, 0.5))
    chains = {(p.config.mechanism, p.config.activation_noise_multiplier) for p in expand(BASE, axes, tmp_path)}
    assert chains == {(("none",), None), (("activation_noise",), 0.5), (("gaussian", "rotation_mask"), None),
                      (("gaussian", "rotation_mask", "activation_noise"), 0.5)}


def test_fingerprint_is_the_config_not_the_folder(tmp_path: Path) -> None:
    one, = expand(BASE, SweepAxes(mechanisms=("gaussian",), epsilons=(2.0,)), tmp_path / "a")
    same, = expand(BASE, SweepAxes(mechanisms=("gaussian",), epsilons=(2.0,)), tmp_path / "b")
    other, = expand(BASE, SweepAxes(mechanisms=("gaussian",), epsilons=(4.0,)), tmp_path / "a")
    assert one.fingerprint == same.fingerprint != other.fingerprint
    assert one.fingerprint == fingerprint(point_identity(one.config, one.attacks)) and len(one.fingerprint) == 64
    fewer_attacks, = expand(BASE, SweepAxes(mechanisms=("gaussian",), epsilons=(2.0,), attacks=("delta_argmax",)),
                            tmp_path / "a")
    assert fewer_attacks.fingerprint != one.fingerprint


@pytest.mark.parametrize("axes", [
    {"mechanisms": ("gaussian", "nope")}, {"epsilons": (-1.0,)}, {"epsilons": (0.0,)}, {"mechanisms": ()},
    {"epsilons": ()}, {"activation_noise_multipliers": (-0.5,)}, {"layer_subsets": ((0, 1),)},
    {"train_samples": (0,)}, {"attacks": ("no_such_attack",)}, {"attacks": ("candidate_matching",)},
])
def test_bad_axes_are_user_errors(axes: dict) -> None:
    with pytest.raises(UserInputError):
        SweepAxes(**axes)


@pytest.mark.parametrize("flags", [
    ["--mechanisms", "gaussian,bogus"], ["--epsilons", "1,-2"], ["--epsilons", ","], ["--train-samples", "0"],
    ["--mechanisms", "gaussian", "--noise-multiplier", "2"], ["--layer-subsets", "1,2/7"],
])
def test_cli_bad_input_is_one_error_line_before_any_work(flags: list[str], tmp_path: Path,
                                                         capsys: pytest.CaptureFixture) -> None:
    output = tmp_path / "out"
    code = main(["compare", "--model", "tiny-llama", "--quiet", "--output", str(output), *flags])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: ") and err.count("\n") == 1
    assert not output.exists()  # nothing was fine-tuned or written
