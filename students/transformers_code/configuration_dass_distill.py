"""Configurations of the dass-distill student families for transformers (remote code).

Written into every exported student folder by dass-distill; imports only transformers.
The keys are those of the folder's config.json, which dass-distill itself also reads.
Scores are per-class sigmoids (multi-label tagging), so ``problem_type`` defaults to
``multi_label_classification``: the audio-classification pipeline then applies a sigmoid.
"""

from transformers import PretrainedConfig


class _StudentConfig(PretrainedConfig):
    """Shared by the families: labels, and multi-label scores unless told otherwise."""

    def __init__(self, num_classes=None, **kwargs):
        kwargs.setdefault("problem_type", "multi_label_classification")
        super().__init__(**kwargs)
        self.num_classes = self.num_labels if num_classes is None else num_classes
        if "id2label" in kwargs and self.num_classes != self.num_labels:
            raise ValueError(f"config has {self.num_labels} labels but num_classes={self.num_classes}")


class DassConfig(_StudentConfig):
    """DASS: VMamba-style 2D selective scan over the filterbank (Bhati et al., 2024)."""

    model_type = "dass"

    def __init__(self, depths=(2, 2, 8, 2), dims=(96, 192, 384, 768), in_chans=1, d_state=1, ssm_ratio=1.0,
                 dt_rank="auto", d_conv=3, mlp_ratio=4.0, drop_rate=0.0, drop_path_rate=0.2, **kwargs):
        self.depths = list(depths)
        self.dims = list(dims)
        self.in_chans = in_chans
        self.d_state = d_state
        self.ssm_ratio = ssm_ratio
        self.dt_rank = dt_rank
        self.d_conv = d_conv
        self.mlp_ratio = mlp_ratio
        self.drop_rate = drop_rate
        self.drop_path_rate = drop_path_rate
        super().__init__(**kwargs)


class _AudioMambaConfig(_StudentConfig):
    """Bidirectional Mamba over 16 x 16 spectrogram patches (AuM, SSAMBA)."""

    def __init__(self, embed_dim=384, depth=24, variant="bi-bi", num_mel_bins=128, target_length=1024,
                 patch_size=16, fstride=16, tstride=16, d_state=16, d_conv=4, expand=2, drop_rate=0.0,
                 drop_path_rate=0.0, norm_eps=1e-5, head="cls", **kwargs):
        self.embed_dim = embed_dim
        self.depth = depth
        self.variant = variant
        self.num_mel_bins = num_mel_bins
        self.target_length = target_length
        self.patch_size = patch_size
        self.fstride = fstride
        self.tstride = tstride
        self.d_state = d_state
        self.d_conv = d_conv
        self.expand = expand
        self.drop_rate = drop_rate
        self.drop_path_rate = drop_path_rate
        self.norm_eps = norm_eps
        self.head = head
        super().__init__(**kwargs)

    def grid(self, frames=None):
        """(frequency, time) patches for ``frames`` frames (default ``target_length``)."""
        frames = self.target_length if frames is None else frames
        return ((self.num_mel_bins - self.patch_size) // self.fstride + 1,
                (frames - self.patch_size) // self.tstride + 1)


class AuMConfig(_AudioMambaConfig):
    """AuM, Audio Mamba (Erol et al., 2024)."""

    model_type = "aum"


class SsambaConfig(_AudioMambaConfig):
    """SSAMBA, self-supervised audio Mamba (Shams et al., 2024)."""

    model_type = "ssamba"


class CNNBaselineConfig(_StudentConfig):
    """The toolkit's plain CNN baseline."""

    model_type = "cnn_baseline"

    def __init__(self, channels=(16, 32, 64, 128), drop_rate=0.2, **kwargs):
        self.channels = list(channels)
        self.drop_rate = drop_rate
        super().__init__(**kwargs)
