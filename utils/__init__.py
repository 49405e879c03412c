"""Helpers shared by the template. Kept free of heavy imports: new_project.py uses utils.errors."""
