import pytest

import factory
from tests.conftest import invoke


def test_public_surface_is_pinned():
    assert sorted(factory.__all__) == sorted(
        [
            "__version__",
            "FactoryError",
            "InputError",
            "ConfigError",
            "UnknownNameError",
            "DataError",
            "ModelError",
            "BundleError",
            "SignatureError",
            "MissingDependencyError",
            "ExportError",
            "ValidationError",
            "GateFailure",
        ]
    )


@pytest.mark.parametrize(
    "args",
    [[], ["data"], ["data", "synth"], ["data", "import"], ["data", "report"], ["data", "types"], ["train"], ["run"]],
)
def test_every_command_explains_itself(args):
    result = invoke(*args, "--help")
    assert result.exit_code == 0, result.output
    assert "Usage:" in result.output
    assert len(result.output.splitlines()) > 5


def test_usage_error_exits_2():
    result = invoke("data", "synth")  # --out is required
    assert result.exit_code == 2
    assert "--out" in result.output


def test_input_error_is_one_line_without_traceback(tmp_path):
    result = invoke("train", "--config", str(tmp_path / "nope.yaml"))
    assert result.exit_code == 2
    assert "does not exist" in result.stderr
    assert "Traceback" not in result.output


def test_debug_shows_the_real_exception(tmp_path):
    result = invoke("--debug", "train", "--config", str(tmp_path / "nope.yaml"))
    assert isinstance(result.exception, factory.ConfigError)


def test_list_architectures_includes_torchvision_and_tiny():
    result = invoke("train", "--list-architectures")
    names = result.output.split()
    assert {"mobilenet_v3_small", "resnet18", "efficientnet_b0", "tiny-cnn"} <= set(names)
