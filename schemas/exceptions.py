"""One root error for the project, and the contract errors."""


class GridstreamError(Exception):
    """Root of every error gridstream raises on purpose."""


class ContractError(GridstreamError):
    """A record or artifact does not satisfy its contract."""
