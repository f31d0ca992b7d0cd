"""One configuration for every learned method (docs/methods/fapfl.md, the design card).

The switches choose the parts (prompt structure, class word, DAP, flows, pixel heads, image
head); the sizes configure them. A method is a preset of switches and sizes, and its official
code's behaviours where it departs from its paper are one more set of switches: both are
declared by the method's registry entry (``models/methods/``; docs/faithfulness.md).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Set, Tuple

STRUCTURES = ("cap", "bank")
CLASS_WORDS = ("object", "name")
FLOWS = ("none", "context", "context+abnormal", "context+state")
PIXEL_HEADS = ("similarity", "rca", "both")
IMAGE_HEADS = ("fixed", "class_mapping")
SIMILARITY_LAYERS = ("final", "features")
LAYER_REDUCTIONS = ("mean", "sum")
DAP_SELECT = ("topk", "first")

# The design card's switches: only the combined method may change them.
STRUCTURE_SWITCHES = frozenset({"prompt_structure", "share_normal_context", "dap", "flows", "pixel_head",
                                "image_head", "similarity_layers", "layer_reduce"})


@dataclass
class ModelConfig:
    """Switches and sizes of the one model; the defaults are FAPrompt's (the first preset)."""

    # --- parts (the design card, docs/methods/fapfl.md)
    prompt_structure: str = "cap"  # cap: CAP prompts (FAPrompt, AnomalyCLIP); bank: Bayes-PFL's prompt bank
    share_normal_context: bool = True  # CAP: abnormal prompts start with the normal tokens (FAPrompt)
    class_word: str = "object"  # the word in the prompts: "object" or the readable class "name"
    dap: bool = True  # FAPrompt's data-dependent abnormality prior
    flows: str = "none"  # Bayes-PFL's prompt flows
    pixel_head: str = "similarity"  # similarity (V-V patches vs text), rca, or both
    image_head: str = "fixed"  # fixed: cosine / temperature; class_mapping: Bayes-PFL's (+ stage-2 fuse)
    similarity_layers: str = "final"  # final V-V tokens (FAPrompt) or those of features_list (AnomalyCLIP)
    layer_reduce: str = "mean"  # similarity maps of several layers: averaged, or summed (AnomalyCLIP)
    # --- CAP
    abnormal_prompts: int = 10  # K
    normal_ctx: int = 5
    abnormal_ctx: int = 2
    depth: int = 9  # deep text prompts at text layers 2..depth
    t_n_ctx: int = 4  # deep prompt length
    # --- DAP
    dap_k: int = 10
    dap_select: str = "topk"
    # --- prompt bank
    prompt_num: int = 3  # B
    prompt_context_len: int = 5  # P
    prompt_state_len: int = 5  # Q
    # --- flows
    num_flows: int = 10  # planar transforms per flow
    sample_num: int = 10  # R at test time
    # --- heads
    features_list: Tuple[int, ...] = (6, 12, 18, 24)
    rca_heads: int = 4
    temperature: float = 0.07
    map_loss_weight: float = 1.0  # AnomalyCLIP weighs its map losses by 4
    vv_start: Optional[int] = None  # first V-V block; None: the last 19 of 24 blocks, scaled
    # --- test time
    sigma: float = 10.0
    seed: int = 111  # test-time flow noise
    # --- official-code behaviours (docs/faithfulness.md)
    fused_focal_logits: bool = False
    deep_prompt_fp16: bool = False
    official_noise: bool = False
    official_state_kl: bool = False
    vv_aliased: bool = False  # AnomalyCLIP before April 2025: every listed layer is the last V-V layer

    # ------------------------------------------------------------------ derived
    @property
    def uses_similarity(self) -> bool:
        return self.pixel_head in ("similarity", "both")

    @property
    def uses_rca(self) -> bool:
        return self.pixel_head in ("rca", "both")

    @property
    def two_stage(self) -> bool:
        """Bayes-PFL's image head trains a second stage on the image path alone."""
        return self.image_head == "class_mapping"

    def validate(self) -> None:
        """Raise ``ValueError`` naming the first inconsistent setting."""
        for name, allowed in (("prompt_structure", STRUCTURES), ("class_word", CLASS_WORDS), ("flows", FLOWS),
                              ("pixel_head", PIXEL_HEADS), ("image_head", IMAGE_HEADS),
                              ("similarity_layers", SIMILARITY_LAYERS), ("layer_reduce", LAYER_REDUCTIONS),
                              ("dap_select", DAP_SELECT)):
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name} must be one of {allowed}, got {getattr(self, name)!r}")
        if self.prompt_structure == "cap" and self.flows == "context+state":
            raise ValueError("CAP prompts have no normal state tokens: use flows context+abnormal")
        if self.prompt_structure == "bank" and self.dap:
            raise ValueError("the DAP prior acts on CAP's abnormal tokens: use prompt_structure cap or dap off")
        if self.dap and not self.share_normal_context:
            raise ValueError("DAP is defined on FAPrompt's compound prompts (share_normal_context on)")
        for name in ("abnormal_prompts", "normal_ctx", "abnormal_ctx", "depth", "dap_k", "prompt_num",
                     "prompt_context_len", "prompt_state_len", "num_flows", "sample_num", "rca_heads"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if not self.features_list:
            raise ValueError("features_list needs at least one layer")

    def relevant_fields(self) -> Set[str]:
        """The fields that have an effect under these switches (flags for the others are errors)."""
        fields = {"class_word", "sigma", "temperature", "map_loss_weight", "seed"}
        if self.prompt_structure == "cap":
            fields |= {"abnormal_prompts", "normal_ctx", "abnormal_ctx", "depth", "t_n_ctx", "deep_prompt_fp16"}
        else:
            fields |= {"prompt_num", "prompt_context_len", "prompt_state_len"}
        if self.dap:
            fields |= {"dap_k", "dap_select", "fused_focal_logits"}
        if self.flows != "none":
            fields |= {"num_flows", "sample_num", "official_noise", "official_state_kl"}
        if self.uses_similarity:
            fields |= {"vv_start"}
            if self.similarity_layers == "features":
                fields |= {"features_list", "vv_aliased"}
        if self.uses_rca:
            fields |= {"features_list", "rca_heads"}
        if self.two_stage:
            fields |= {"features_list"}
        return fields
