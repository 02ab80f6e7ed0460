"""Everything a run is given, checked before any work: settings (``settings``), then files (``files``)."""
