"""zaya-vl: Zyphra's ZAYA1-VL, exact and fast — load, generate, fine-tune, evaluate.

    from zaya_vl import ZayaVL, ZayaVLProcessor
    model = ZayaVL.from_pretrained(path, dtype=torch.bfloat16, device_map="auto")
    processor = ZayaVLProcessor.from_pretrained(path)
"""

from zaya_vl.configuration import ReferenceZayaVLConfig, ZayaVLConfig
from zaya_vl.lm import ZayaLM, ZayaLMConfig
from zaya_vl.modeling import ZayaVL, ZayaVLModel
from zaya_vl.processing import ZayaVLProcessor
from zaya_vl.registration import register

register()

__all__ = ["ReferenceZayaVLConfig", "ZayaLM", "ZayaLMConfig", "ZayaVL", "ZayaVLConfig", "ZayaVLModel", "ZayaVLProcessor"]
__version__ = "0.1.0"
