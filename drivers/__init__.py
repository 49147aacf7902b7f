"""Hardware and simulation backends behind small interfaces (cameras, arms, grippers, sim)."""
