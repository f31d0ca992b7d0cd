"""fapfl: the combined model of this repository's design card.

FAPrompt's CAP prompts and DAP prior, with Bayes-PFL's prompt flows (context and abnormal
state), both pixel heads (similarity and RCA) and the class-mapping image head. The design
card's switches (``--prompt_structure``, ``--dap``, ``--flows``, ``--pixel_head``, ...) may be set
by flags for this method alone, so every published method is one column of it.
docs/methods/fapfl.md explains it.
"""
from __future__ import annotations

from models.methods import anomalyclip, bayes_pfl, faprompt
from models.methods.base import Method, Recipe, frozen
from models.scoring import ScoreRule


def score_rule(config) -> ScoreRule:
    """The rule of the method whose parts the switches select: FAPrompt's with DAP, else
    Bayes-PFL's with the class-mapping image head, else AnomalyCLIP's."""
    if config.dap:
        return faprompt.SCORE
    return bayes_pfl.SCORE if config.image_head == "class_mapping" else anomalyclip.SCORE


METHOD = Method(
    name="fapfl",
    title="FAPrompt + Bayes-PFL (design card)",
    paper=None,
    docs="docs/methods/fapfl.md",
    order=2,
    preset=frozen(dict(prompt_structure="cap", class_word="name", dap=True, flows="context+abnormal",
                       pixel_head="both", image_head="class_mapping", sigma=8.0)),
    backbone=frozen({"pos_interpolation": "bilinear"}),
    recipe=Recipe(epochs=20, batch_size=8, seed=111, lr=bayes_pfl.GROUP_RATES, validation="aux",
                  target_validation=bayes_pfl.TARGET_VALIDATION, augment=True, mosaic_prob=bayes_pfl.MOSAIC_PROB),
    score=score_rule,
    test_seed=111,
    switches=True,
)
