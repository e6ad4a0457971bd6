"""IOI (indirect object identification, Wang et al.) with attention SAEs: which features at S2 the circuit uses.

Modules, in the order the study runs them: ``dataset`` (templates, single-token names, per-prompt positions,
corruptions), ``patching`` (the metric, validation, hook_z patching and noising), ``ablation`` (SAE feature ablation
at each prompt's own S2, error term kept), ``sources`` (DFA of features by source role), ``study`` (:func:`ioi_study`).
"""

from attnsae.studies.ioi.ablation import error_ablation_hooks, feature_ablation, zero_at_positions
from attnsae.studies.ioi.dataset import (IOIDataset, IOIPrompt, build_ioi_dataset, corrupt, single_token_names,
                                         tokenize_prompts)
from attnsae.studies.ioi.patching import (logit_diff, noise, patch_scan, pick_layers, run_logit_diff,
                                          validate_ioi, z_at)
from attnsae.studies.ioi.sources import dfa_by_role
from attnsae.studies.ioi.study import ioi_study

__all__ = ["IOIDataset", "IOIPrompt", "build_ioi_dataset", "corrupt", "single_token_names", "tokenize_prompts",
           "logit_diff", "run_logit_diff", "validate_ioi", "z_at", "noise", "patch_scan", "pick_layers",
           "feature_ablation", "error_ablation_hooks", "zero_at_positions", "dfa_by_role", "ioi_study"]
