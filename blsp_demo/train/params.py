"""The trained part of a BLSP model: which modules, their parameters, their state (what
checkpoints and exports hold). Step 2 and the CTC warm start share these."""

from __future__ import annotations

import torch


ADAPTER_MODULES = ("subsampler", "adapter", "speech_ln", "ctc", "decoder_adapter")  # the only trained part of a BLSP model


def adapter_parameters(model) -> list[torch.nn.Parameter]:
    return [p for name in ADAPTER_MODULES if getattr(model, name, None) is not None
            for p in getattr(model, name).parameters()]


def adapter_state(model) -> dict[str, torch.Tensor]:
    """The adapter's entries of the model's state dict (what checkpoints and exports hold)."""
    return {k: v.detach() for k, v in model.state_dict().items() if k.split(".")[0] in ADAPTER_MODULES}


def freeze_all_but_adapter(model) -> None:
    for p in model.parameters():
        p.requires_grad_(False)
    for p in adapter_parameters(model):
        p.requires_grad_(True)
