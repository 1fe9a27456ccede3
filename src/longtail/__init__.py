"""longtail: long-tailed recognition by decoupling representation and classifier.

Stage-2 re-balancers work on any model's features without the CLI::

    from longtail import TauNorm
    TauNorm(fc.weight).fit(train_feats, train_labels, val_feats, val_labels).predict(test_feats)
"""

__version__ = "0.1.0"

_REBALANCERS = ("CRT", "LWS", "NCM", "Joint", "Rebalancer", "TauNorm", "LogitAdjust", "BALMS",
                "LAS", "WB")
__all__ = [*_REBALANCERS, "__version__"]


def __getattr__(name: str):
    # Imported on first use so that `longtail --help` does not wait for torch.
    if name in _REBALANCERS:
        from longtail.stages import rebalance

        return getattr(rebalance, name)
    raise AttributeError(f"module 'longtail' has no attribute {name!r}")


def __dir__() -> list[str]:
    # The lazy names are not in globals() until first used: list them for dir() and help().
    return sorted({*globals(), *__all__})
