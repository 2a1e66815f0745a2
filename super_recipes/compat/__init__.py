"""Adapters that let scripts written for other training frameworks' APIs run on super_recipes."""
