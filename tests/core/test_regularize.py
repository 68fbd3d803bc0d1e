"""The forgetting regularizer (``model.regularization``): its terms, one clear message without a
starting model, TAO's values kept by convert-spec, logged terms, and less drift from the teacher."""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F

from core.errors import ConfigError
from core.spec.load import check, load_config
from core.train.regularize import RegularizedLoss

torch.set_num_threads(1)


class Zero(torch.nn.Module):
    def forward(self, image_features, text_features, logit_scale, logit_bias, match_keys=None):
        return image_features.sum() * 0


def test_terms_are_zero_at_the_teacher_and_match_their_definitions():
    weights = load_config(None).model.regularization
    loss = RegularizedLoss(Zero(), weights)
    torch.manual_seed(0)
    t_img, t_txt = F.normalize(torch.randn(4, 8), dim=-1), F.normalize(torch.randn(4, 8), dim=-1)
    loss.teacher = (t_img, t_txt)
    assert loss(t_img, t_txt, torch.tensor(10.0), None).item() == pytest.approx(0, abs=1e-7)
    s_img, s_txt = F.normalize(t_img + 0.1 * torch.randn(4, 8), dim=-1), F.normalize(t_txt + 0.1 * torch.randn(4, 8), dim=-1)
    value = loss(s_img, s_txt, torch.tensor(10.0), None).item()
    s, t = torch.cat([s_img, s_txt]), torch.cat([t_img, t_txt])
    mse = ((s - t) ** 2).sum(-1).mean().item()
    cosine = (1 - (s * t).sum(-1)).mean().item()
    similarity = ((s_img @ s_txt.T - t_img @ t_txt.T) ** 2).mean().item()
    assert loss.terms["reg/embedding_mse"].item() == pytest.approx(mse, rel=1e-5)
    assert loss.terms["reg/cosine"].item() == pytest.approx(cosine, rel=1e-5)
    assert loss.terms["reg/similarity"].item() == pytest.approx(similarity, rel=1e-5)
    assert value == pytest.approx(0.05 * mse + 0.05 * cosine + 0.10 * similarity, rel=1e-5)
    assert math.isclose(cosine, mse / 2, rel_tol=1e-4)  # unit vectors: |s - t|² = 2 (1 - cos)


def test_the_regularizer_needs_a_starting_model():
    cfg = load_config(None, ["model.type=example-tiny", "model.pretrained=false", "model.regularization.enabled=true",
                             "dataset.train.datasets.0.image_dir=/x"])
    with pytest.raises(ConfigError, match="model.regularization.enabled: the regularizer keeps the model near its "
                                          "starting weights, but the model starts from random weights"):
        check(cfg, "train", check_paths=False)


def test_convert_spec_keeps_tao_regularization_values(tmp_path):
    import yaml

    from core.spec.load import convert_tao_spec

    source = tmp_path / "tao.yaml"
    source.write_text(yaml.safe_dump({"model": {"regularization": {
        "enabled": True, "embedding_mse_weight": 0.2, "cosine_weight": 0.3, "similarity_weight": 0.4}}}))
    out = tmp_path / "clip.toml"
    out.write_text(convert_tao_spec(source))
    reg = load_config(out).model.regularization
    assert (reg.enabled, reg.embedding_mse_weight, reg.cosine_weight, reg.similarity_weight) == (True, 0.2, 0.3, 0.4)


def test_a_regularized_run_logs_its_terms_and_drifts_less(tmp_path, training):
    from core.runtime.build import build_model
    from core.runtime.checkpoint import model_checkpoint, save_atomic
    from core.train.trainer import Trainer

    start = build_model(training.config(tmp_path / "start"))
    base = save_atomic(model_checkpoint(start), tmp_path / "base.pth")
    torch.manual_seed(5)
    images = torch.randn(8, 3, 32, 32)
    with torch.no_grad():
        reference = start.eval().encode_image(images, normalize=True)

    def drift(name: str, *extra: str) -> float:
        cfg = load_config(None, [*training.overrides(tmp_path / name, num_epochs=1), f"train.pretrained_model_path={base}",
                                 *extra])
        trainer = Trainer(cfg)
        trainer.train()
        with torch.no_grad():
            moved = trainer.clip.eval().encode_image(images, normalize=True)
        return (moved - reference).pow(2).sum(-1).mean().item()

    free = drift("free")
    held = drift("held", "model.regularization.enabled=true", "model.regularization.embedding_mse_weight=20",
                 "model.regularization.cosine_weight=5", "model.regularization.similarity_weight=5")
    assert held < free / 2, (held, free)
    records = [json.loads(line) for line in (tmp_path / "held" / "train" / "metrics.jsonl").read_text().splitlines()]
    logged = [r for r in records if "train/reg/embedding_mse" in r]
    assert logged and all({"train/reg/cosine", "train/reg/similarity"} <= r.keys() for r in logged)
    assert logged[-1]["train/reg/embedding_mse"] > 0
