"""Classification of destination answers: done, retry later, or dead-letter now."""

from __future__ import annotations

import pytest

from pacsinfra.pacs.router.sender import is_permanent, is_success


@pytest.mark.parametrize(("status", "success", "permanent"), [
    (0x0000, True, False),
    (0xB000, True, False),  # coercion of data elements
    (0xB007, True, False),  # data set does not match SOP class (warning)
    (0xB006, True, False),  # elements discarded
    (0xA700, False, False),  # out of resources: retry
    (0xA7FF, False, False),
    (0x0110, False, False),  # processing failure: retry
    (0xA900, False, True),  # data set does not match SOP class
    (0xA9FF, False, True),
    (0x0122, False, True),  # SOP class not supported
    (0x0124, False, True),  # not authorized
    (0xC000, False, True),  # cannot understand
    (0xCFFF, False, True),
])
def test_status_classes(status: int, success: bool, permanent: bool) -> None:
    assert is_success(status) is success
    assert is_permanent(status) is permanent
