"""Errors the analysis package raises for bad input (the CLI prints them as one line and exits 2), and the names
of the IsoFLOP minimum methods, so the command line can list them without importing the analysis itself."""

ISOFLOP_METHODS = ("local", "parabola", "akima")
DEFAULT_ISOFLOP_METHOD = "local"


class AnalysisError(ValueError):
    """Input the analysis cannot use as given (a table, a fit file, an option); the message says why."""


class RunsError(AnalysisError):
    """The runs table cannot be used as given."""


class FitError(AnalysisError):
    """A law or analysis cannot be fitted to this table: missing inputs, too few points, no spread, ..."""
