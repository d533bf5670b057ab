"""ngt's successive-halving sweeper, as Hydra finds sweeper plugins (ngt.halving holds its logic)."""
