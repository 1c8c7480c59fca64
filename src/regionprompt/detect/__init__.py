"""Detection models: class-agnostic proposals, the RegionCLIP region classifier/detector, T-Rex2."""
