"""The ModelDeployment API: typed models (the source of the CRD) and their structural schema."""
