"""The teaching text's nets (`SimpleNet`, `ThreeLayerNet`, `MLP`), built on the engine."""
