import pytest
import torch

from dass_distill.models import parameter_count
from dass_distill.frontend import KaldiFbank
from dass_distill.students import create_model, from_pretrained, model_config, save_pretrained


@pytest.mark.parametrize("name, expected", [("dass_small", 29.9e6), ("dass_medium", 48.6e6)])
def test_parameter_counts_match_dass(name, expected):
    n = parameter_count(name, 527)
    assert abs(n - expected) / expected < 0.01, n


def test_forward_any_length_and_no_positional_embedding():
    torch.manual_seed(0)
    model = create_model("dass_tiny", num_classes=7).eval()
    assert not any("pos" in name for name, _ in model.named_parameters())
    with torch.no_grad():
        for frames in (64, 101, 300):
            out = model(torch.randn(2, frames, 128))
            assert out.shape == (2, 7) and torch.isfinite(out).all()


def test_backward_reaches_every_parameter():
    torch.manual_seed(0)
    model = create_model("dass_tiny", num_classes=5, drop_path_rate=0.0)
    model(torch.randn(2, 96, 128)).sum().backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, name


def test_ssm_constants_have_no_weight_decay():
    model = create_model("dass_tiny")
    skip = model.no_weight_decay()
    assert {n.split(".")[-1] for n in skip} == {"A_logs", "Ds", "dt_projs_bias"}


def test_unknown_override_is_refused():
    """One line naming the model and its valid keys (was a bare KeyError traceback)."""
    from dass_distill.errors import UserError

    with pytest.raises(UserError, match=r"^dass_tiny has no option 'depth'; valid options: d_conv, d_state, depths, "):
        model_config("dass_tiny", depth=3)
    with pytest.raises(UserError, match="unknown model 'dass_huge'; known: .*dass_small"):
        create_model("dass_huge")


def test_save_and_load_pretrained_round_trip(tmp_path):
    torch.manual_seed(1)
    model = create_model("dass_tiny", num_classes=3).eval()
    fe = KaldiFbank(target_length=200)
    save_pretrained(model, tmp_path, fe, ["/m/a", "/m/b", "/m/c"], ["A", "B", "C"])
    back, fe2, config = from_pretrained(tmp_path)
    assert fe2 == fe and config["id2label"]["2"] == "C" and config["label_ids"][0] == "/m/a"
    x = torch.randn(1, 200, 128)
    with torch.no_grad():
        torch.testing.assert_close(back(x), model(x), rtol=0, atol=0)


def test_feature_extractor_matches_dass_recipe():
    fe = KaldiFbank(target_length=1024)
    wave = torch.randn(160000) * 0.1  # 10 s at 16 kHz
    raw = fe.fbank(wave)
    assert raw.shape == (998, 128)  # the DASS/AST frame count for 10 s
    feats = fe(wave)
    assert feats.shape == (1024, 128)
    torch.testing.assert_close(feats[:998], (raw - fe.mean) / (2 * fe.std))
    # padding happens before normalisation: padded frames hold the normalised zero
    torch.testing.assert_close(feats[998:], torch.full((26, 128), -fe.mean / (2 * fe.std)))
    assert fe(torch.randn(16000 * 12) * 0.1, pad_to_target=False).shape[0] == 1198
