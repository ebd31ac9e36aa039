"""Carbon-aware recommendation: product-carbon-footprint estimation and carbon-aware re-ranking."""
