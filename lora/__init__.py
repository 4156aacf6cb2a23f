from zaya_vl.lora.gated import GatedExpertLoRA, GatedLoRA

__all__ = ["GatedLoRA", "GatedExpertLoRA"]
