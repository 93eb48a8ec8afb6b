"""Configs read back from disk may not run code on this machine (docs/runs.md, "Sharing runs
safely"): ``configs`` holds the rule for a run's config and a checkpoint's hyperparameters,
``overrides`` the same rule for a sweep's saved command-line overrides."""

from fmnist_lightning.trust.configs import (
    TARGET,
    TRUST_KEY,
    UntrustedConfigError,
    check_checkpoint,
    check_config,
    check_interpolations,
    check_target,
)
from fmnist_lightning.trust.overrides import check_overrides

__all__ = [
    "TARGET",
    "TRUST_KEY",
    "UntrustedConfigError",
    "check_checkpoint",
    "check_config",
    "check_interpolations",
    "check_overrides",
    "check_target",
]
