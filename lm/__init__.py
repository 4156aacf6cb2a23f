"""The ZAYA1 language model: CCA attention, MLP-routed top-1 MoE, learned residual scaling."""

from zaya_vl.lm.cache import ZayaCache
from zaya_vl.lm.config import ZayaLMConfig
from zaya_vl.lm.modeling import ZayaLM, ZayaLMModel, ZayaPreTrainedModel
from zaya_vl.lm.strict_loading import CheckpointMismatchError

__all__ = ["ZayaLM", "ZayaLMConfig", "ZayaLMModel", "ZayaPreTrainedModel", "ZayaCache", "CheckpointMismatchError"]
