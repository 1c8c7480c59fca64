"""Moved to :mod:`regionprompt.proposals` (a structure shared by the models, the engines and evaluation);
this path re-exports it for one release."""

from regionprompt.proposals import Proposals, ProposalSource

__all__ = ["ProposalSource", "Proposals"]
