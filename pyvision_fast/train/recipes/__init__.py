"""train/recipes"""
