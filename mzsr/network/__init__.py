"""The MZSR network and its 3x3 convolutions (the CPU path with a written-out second-order backward)."""
