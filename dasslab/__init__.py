"""dasslab."""
