"""What dasslab writes for other tools: translated datasets, predictions, shareable weights."""
