"""Which teacher, CLS token and summary head an adaptor uses, read from the checkpoint's ``args.teachers``.

Each teacher entry is a dict with at least ``name``; ``type`` names its family (``siglip2``,
``open_clip``, ...). Teacher *i*'s summary head is stored as ``_heads.i`` or ``_heads.<name>`` and
reads CLS token ``token_slot`` (default *i*). Nothing here is hard-coded per size.
"""

from __future__ import annotations

import attrs
import torch

from backbones.radio.sizes import RadioSize, adaptor_names
from backbones.radio.weights import RadioCheckpoint
from core import ClipcoreError


@attrs.frozen(kw_only=True)
class Teacher:
    name: str
    index: int
    slot: int
    head: dict[str, torch.Tensor]


def select_teacher(ckpt: RadioCheckpoint, size: RadioSize, adaptor: str, *, where: str) -> Teacher:
    """The teacher of ``adaptor`` (``siglip``/``clip``) in ``ckpt``, with its head and CLS slot."""
    spec = size.text_tower(adaptor)
    names = {n for n, canonical in adaptor_names(size).items() if canonical == adaptor}
    teachers = ckpt.teachers
    described = ", ".join(f"{t.get('name')} (type {t.get('type')})" for t in teachers) or "none"
    matches = [i for i, t in enumerate(teachers)
               if t.get("type") == spec.teacher_type or str(t.get("name", "")).lower() in names]
    if len(matches) != 1:
        what = "no teacher" if not matches else f"{len(matches)} teachers"
        raise ClipcoreError(
            f"{ckpt.path}: {what} in args.teachers match the {adaptor!r} adaptor "
            f"(type {spec.teacher_type!r} or name in {sorted(names)}); teachers: {described}",
            where=where, fix="choose the other model.adaptor_name, or use the published checkpoint of "
                             f"{size.model_type} ({size.hf_repo}, {size.hub_file})")
    index = matches[0]
    name = str(teachers[index].get("name", index))
    head = ckpt.heads.get(str(index)) or ckpt.heads.get(name)
    if not head:
        raise ClipcoreError(f"{ckpt.path}: teacher {name!r} has no summary head (_heads.{index} or _heads.{name}); "
                            f"heads present: {sorted(ckpt.heads) or 'none'}", where=where,
                            fix="use the torch-hub .pth.tar, which ships the adaptor heads")
    num_cls = ckpt.trunk["embeds.cls_token"].shape[1] + ckpt.trunk["embeds.reg_token"].shape[1] - ckpt.num_registers
    slot = teachers[index].get("token_slot")
    slot = (index if slot is None else int(slot)) if ckpt.cls_per_teacher else 0
    if not 0 <= slot < num_cls:
        raise ClipcoreError(f"{ckpt.path}: teacher {name!r} reads CLS token {slot}, but the model has {num_cls}",
                            where=where, fix="the checkpoint's args and weights disagree; download it again")
    return Teacher(name=name, index=index, slot=slot, head=head)
