"""Per-image adaptation: MZSR's meta-test (`adapt`), its learning-rate schedules, tiled inference,
the refinements shared with ZSSR (self-ensemble, back-projection) and the ZSSR baseline."""
