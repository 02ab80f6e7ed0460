"""Measurements of translation quality that the paper could only show in pictures."""
