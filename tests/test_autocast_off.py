"""``autocast_off``: a float32 scope under autocast, and no autocast context entered where it is off already."""

from __future__ import annotations

import pytest
import torch

from peftbench.backbone.autocast_off import autocast_off


def test_turns_autocast_off_inside_and_back_on_after() -> None:
    a, b = torch.randn(4, 4), torch.randn(4, 4)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert (a @ b).dtype == torch.bfloat16
        with autocast_off("cpu"):
            assert not torch.is_autocast_enabled("cpu") and (a @ b).dtype == torch.float32
        assert torch.is_autocast_enabled("cpu") and (a @ b).dtype == torch.bfloat16


def test_enters_no_autocast_where_it_is_off(monkeypatch: pytest.MonkeyPatch) -> None:
    entered = []
    monkeypatch.setattr(torch, "autocast", lambda *args, **kwargs: entered.append(args))
    with autocast_off("cpu"):
        pass
    assert entered == []
