"""`python -m models.parity`'s contract on every shipped golden fixture (``../shared/fixtures/<arch>/``), every
arch folder there: each output and gradient within the fixture's tolerance. Fixtures live beside the repository."""
from __future__ import annotations

import glob
import os

import pytest

from models import parity

SHARED_FIXTURES = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "..", "shared",
                               "fixtures")


ARCH_FOLDERS = sorted(os.listdir(SHARED_FIXTURES)) if os.path.isdir(SHARED_FIXTURES) else []


def fixtures(arch_folder: str) -> list[str]:
  return sorted(path for path in glob.glob(os.path.join(SHARED_FIXTURES, arch_folder, "*"))
                if path.endswith((".npz", ".json")))


@pytest.mark.parametrize("path", [path for arch in ARCH_FOLDERS for path in fixtures(arch)],
                         ids=lambda path: os.path.relpath(path, SHARED_FIXTURES))
def test_parity_with_the_reference_fixture(path, capsys):
  meta, arrays = parity.load(path)
  failed = parity.compare(meta, arrays, parity.compute(meta, arrays))
  assert not failed, capsys.readouterr().out
