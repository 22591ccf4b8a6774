"""The reference package is the one the spec documents, imported offline with its stand-ins."""

import imagen_pytorch
import torchvision


def test_reference_is_version_2_1_0():
    assert imagen_pytorch.__version__ == "2.1.0"


def test_torchvision_is_our_stand_in_not_a_real_install():
    assert "standins" in torchvision.__file__
