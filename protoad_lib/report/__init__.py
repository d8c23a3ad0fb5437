"""Tables and figures used by the notebooks and the command line."""
