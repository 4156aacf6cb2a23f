"""Where the CLI and VLAssistant put the model: the GPU in bf16 when there is one."""

import pytest
import torch

from zaya_vl.cli import build_parser, device_kwargs
from zaya_vl.inference import resolve_placement


def test_default_is_cuda_in_bf16_when_available(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert resolve_placement() == ("cuda", torch.bfloat16)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_placement() == ("cpu", torch.float32)


def test_explicit_device_map_and_dtype_win():
    assert resolve_placement("cuda:1", None, "float16") == ("cuda:1", torch.float16)
    assert resolve_placement("cpu", "auto", None) == ("auto", torch.bfloat16)
    assert resolve_placement(None, {"": "cpu"}, None) == ({"": "cpu"}, torch.float32)
    assert resolve_placement("cpu", None, "auto") == ("cpu", "auto")
    with pytest.raises(ValueError, match="'floaty'"):
        resolve_placement("cpu", None, "floaty")


@pytest.mark.parametrize("command", [["ask", "q", "--image", "x.png"], ["demo"]])
def test_every_model_command_takes_device_flags(command):
    args = build_parser().parse_args([*command, "--device", "auto", "--dtype", "bfloat16"])
    assert device_kwargs(args) == {"device_map": "auto", "dtype": "bfloat16"}
    args = build_parser().parse_args([*command, "--device", "cuda:1"])
    assert device_kwargs(args) == {"device": "cuda:1", "dtype": None}
